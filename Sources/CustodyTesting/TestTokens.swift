import Dispatch
import Foundation
import JWTKit

/// Signing keys for token tests, made by the openssl command in a scratch directory: RSA
/// 2048, EC P-256, EC P-384 and Ed25519, each as `NAME.key` (private, PKCS#8 PEM) and
/// `NAME.pub` (public, SPKI PEM), plus `rsa.crt` (a self-signed certificate of the RSA key)
/// and `other-rsa` (a key no issuer trusts). Tokens are signed with jwt-kit from the
/// private PEM files.
public final class TestSigningKeys: Sendable {
    public let directory: String

    public init() throws {
        directory = scratchDirectory("jwt-keys")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let script = """
            set -e
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null
            openssl pkey -in rsa.key -pubout -out rsa.pub
            openssl req -x509 -key rsa.key -out rsa.crt -days 2 -subj '/CN=issuer' 2>/dev/null
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other-rsa.key 2>/dev/null
            openssl pkey -in other-rsa.key -pubout -out other-rsa.pub
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256.key
            openssl pkey -in ec256.key -pubout -out ec256.pub
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.key
            openssl pkey -in ec384.key -pubout -out ec384.pub
            openssl genpkey -algorithm ED25519 -out ed25519.key
            openssl pkey -in ed25519.key -pubout -out ed25519.pub
            """
        let (status, _, err) = try run("/bin/sh", ["-c", "cd '\(directory)' && " + script], timeout: 60)
        guard status == 0 else { throw TestFailure.unexpected("openssl failed (\(status)): \(err)") }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    public func path(_ name: String) -> String { directory + "/" + name }

    public func text(_ name: String) throws -> String { try String(contentsOfFile: path(name), encoding: .utf8) }

    /// A configuration's `authentication:` section with one issuer, TestClaims' (its default
    /// issuer and audience, the name in `sub`), trusting the public key files `keys`.
    public func authenticationSection(keys: [String] = ["rsa.pub"], clockSkewSeconds: Int? = nil) -> String {
        """
        authentication:
          jwt:
            - issuer: https://login.example/tenant
              audience: custody
              keys: [\(keys.map(path).joined(separator: ", "))]
              authenticationNameClaim: sub
        """ + (clockSkewSeconds.map { "\n      clockSkewSeconds: \($0)" } ?? "")
    }

    /// A JWKS file with the RSA key (kid `rsa-1`) and the Ed25519 key (kid `ed-1`), their
    /// public numbers read with openssl.
    public func writeJWKS(to file: String) throws {
        let (s1, modulus, e1) = try run("/bin/sh", ["-c", "cd '\(directory)' && openssl rsa -pubin -in rsa.pub -noout -modulus"])
        guard s1 == 0 else { throw TestFailure.unexpected("openssl: \(e1)") }
        let hex = modulus.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "Modulus=", with: "")
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        let (s2, _, e2) = try run("/bin/sh", ["-c", "cd '\(directory)' && openssl pkey -pubin -in ed25519.pub -outform DER -out ed25519.pub.der"])
        guard s2 == 0 else { throw TestFailure.unexpected("openssl: \(e2)") }
        let edDER = try Data(contentsOf: URL(fileURLWithPath: path("ed25519.pub.der")))
        let jwks = """
            {"keys": [
              {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": "\(Self.base64URL(bytes))", "e": "AQAB"},
              {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "\(Self.base64URL(Array(edDER.suffix(32))))"}
            ]}
            """
        try jwks.write(toFile: file, atomically: true, encoding: .utf8)
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// A token with `claims`, signed by `key` (`rsa`, `other-rsa`, `ec256`, `ec384`, `ed25519`)
    /// with `alg` (`RS256`, `RS384`, `RS512`, `ES256`, `ES384`, `EdDSA`), or by `secret` with
    /// `HS256`, or unsigned with `none`. `kid` goes in the header.
    public func token(
        _ claims: TestClaims, alg: String, key: String = "rsa", secret: String? = nil, kid: String? = nil
    ) async throws -> String {
        let keys = JWTKeyCollection()
        switch alg {
        case "RS256", "RS384", "RS512":
            let digest: DigestAlgorithm = alg == "RS256" ? .sha256 : alg == "RS384" ? .sha384 : .sha512
            await keys.add(rsa: try Insecure.RSA.PrivateKey(pem: try text("\(key).key")), digestAlgorithm: digest)
        case "ES256":
            await keys.add(ecdsa: try ES256PrivateKey(pem: try text("\(key).key")))
        case "ES384":
            await keys.add(ecdsa: try ES384PrivateKey(pem: try text("\(key).key")))
        case "EdDSA":
            await keys.add(eddsa: try EdDSA.PrivateKey(pem: try text("\(key).key")))
        case "HS256":
            await keys.add(hmac: HMACKey(from: secret ?? "secret"), digestAlgorithm: .sha256)
        case "none":
            await keys.addUnsecuredNone()
        default:
            throw TestFailure.unexpected("no test signer for \(alg)")
        }
        var header = JWTHeader()
        if let kid { header.kid = kid }
        return try await keys.sign(claims, header: header)
    }
}

extension TestSigningKeys {
    /// `token`, waited for on this (blocking) thread: for test bodies in `offPool` that must
    /// sign a short-lived token just before they use it.
    public func tokenNow(
        _ claims: @autoclosure () -> TestClaims, alg: String, key: String = "rsa"
    ) throws -> String {
        let claims = claims()
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<String, any Error> = .failure(TestFailure.unexpected("not signed"))
        Task {
            do {
                result = .success(try await self.token(claims, alg: alg, key: key))
            } catch {
                result = .failure(error)
            }
            done.signal()
        }
        done.wait()
        return try result.get()
    }
}

/// Claims for a test token: `iss`, `aud`, times relative to now, and any others.
public struct TestClaims: JWTPayload {
    public enum Value: Codable, Sendable {
        case string(String)
        case number(Double)
        case strings([String])

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .string(let value): try container.encode(value)
            case .number(let value): try container.encode(value)
            case .strings(let value): try container.encode(value)
            }
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let value = try? container.decode(String.self) {
                self = .string(value)
            } else if let value = try? container.decode(Double.self) {
                self = .number(value)
            } else {
                self = .strings(try container.decode([String].self))
            }
        }
    }

    public var values: [String: Value]

    /// `expiresIn` seconds from now (negative: expired); nbf and iat now, unless given.
    public init(
        issuer: String = "https://login.example/tenant", audience: String = "custody", subject: String? = "device-1",
        expiresIn: Double = 600, notBeforeIn: Double? = nil, issuedAtIn: Double = 0, extra: [String: Value] = [:]
    ) {
        let now = Date().timeIntervalSince1970
        // Whole seconds, rounded down: an iat rounded up would lie in the future (refused without skew).
        values = ["iss": .string(issuer), "aud": .string(audience), "exp": .number((now + expiresIn).rounded(.down)),
                  "iat": .number((now + issuedAtIn).rounded(.down))]
        if let subject { values["sub"] = .string(subject) }
        if let notBeforeIn { values["nbf"] = .number((now + notBeforeIn).rounded(.down)) }
        values.merge(extra) { _, new in new }
    }

    private struct Name: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Name.self)
        for (name, value) in values { try container.encode(value, forKey: Name(stringValue: name)) }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Name.self)
        values = [:]
        for key in container.allKeys { values[key.stringValue] = try container.decode(Value.self, forKey: key) }
    }

    public func verify(using algorithm: some JWTAlgorithm) async throws {}
}
