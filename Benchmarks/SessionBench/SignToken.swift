import ArgumentParser
import Dispatch
import Foundation
import JWTKit

/// `custody-bench sign-token`: a JSON Web Token for the sign-in benchmarks, signed by jwt-kit
/// with a private key in PEM (made by openssl). Prints the token.
struct SignToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign-token",
        abstract: "Prints a JSON Web Token signed with a PEM private key (RS256, RS384, RS512, ES256, ES384, EdDSA).")

    @Option(help: "The private key, PEM (openssl genpkey).")
    var key: String

    @Option(help: "RS256, RS384, RS512, ES256, ES384 or EdDSA.")
    var alg: String = "RS256"

    @Option(help: "The iss claim.")
    var issuer: String = "https://login.example/tenant"

    @Option(help: "The aud claim.")
    var audience: String = "custody"

    @Option(help: "The sub claim (the client's authentication name).")
    var subject: String = "bench-device"

    @Option(help: "Seconds until exp.")
    var expiresIn: Int = 3600

    struct Claims: JWTPayload {
        var iss: IssuerClaim
        var aud: AudienceClaim
        var sub: SubjectClaim
        var exp: ExpirationClaim
        var iat: IssuedAtClaim
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    func validate() throws {
        guard ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"].contains(alg) else {
            throw ValidationError("--alg must be RS256, RS384, RS512, ES256, ES384 or EdDSA, got \(alg)")
        }
        guard FileManager.default.isReadableFile(atPath: key) else { throw ValidationError("--key: cannot read \(key)") }
    }

    func run() throws {
        let pem = try String(contentsOfFile: key, encoding: .utf8)
        let now = Date()
        let claims = Claims(
            iss: IssuerClaim(value: issuer), aud: AudienceClaim(value: [audience]), sub: SubjectClaim(value: subject),
            exp: ExpirationClaim(value: now.addingTimeInterval(Double(expiresIn))), iat: IssuedAtClaim(value: now))
        let alg = self.alg
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<String, any Error> = .failure(ValidationError("not signed"))
        Task {
            do {
                let keys = JWTKeyCollection()
                switch alg {
                case "ES256": await keys.add(ecdsa: try ES256PrivateKey(pem: pem))
                case "ES384": await keys.add(ecdsa: try ES384PrivateKey(pem: pem))
                case "EdDSA": await keys.add(eddsa: try EdDSA.PrivateKey(pem: pem))
                default:
                    let digest: DigestAlgorithm = alg == "RS256" ? .sha256 : alg == "RS384" ? .sha384 : .sha512
                    await keys.add(rsa: try Insecure.RSA.PrivateKey(pem: pem), digestAlgorithm: digest)
                }
                result = .success(try await keys.sign(claims))
            } catch {
                result = .failure(error)
            }
            done.signal()
        }
        done.wait()
        print(try result.get())
    }
}
