import CustodyConfig
import Foundation
import JWTKit

/// The keys of one token issuer, read from its JWKS and PEM files (and its shared secret,
/// when one is configured): each key as jwt-kit's algorithm for every `alg` it may verify,
/// taken from a `JWTKeyCollection` once, at load. jwt-kit does every signature check; this
/// only says which key may try, and lets a CONNECT's check run without a hop into an actor.
struct TokenKeys: Sendable {
    struct Key: Sendable {
        /// jwt-kit's verifier of this key for each `alg` it verifies (`RS256`, `ES256`, `EdDSA`, ...).
        var verifiers: [String: any JWTAlgorithm]
        /// The JWKS `kid`, if any: a token naming another kid is not tried with this key.
        var kid: String?
        /// Where it came from, for messages.
        var source: String

        var algorithms: Set<String> { Set(verifiers.keys) }

        /// The key as jwt-kit's algorithms, one for each of `algorithms`: asked once of the
        /// collection it was added to (under `identifier`, or as its default key).
        static func make(
            _ collection: JWTKeyCollection, identifier: JWKIdentifier? = nil, algorithms: Set<String>, kid: String?,
            source: String
        ) async throws -> Key {
            var verifiers: [String: any JWTAlgorithm] = [:]
            for alg in algorithms {
                verifiers[alg] = try await collection.getKey(for: identifier, alg: alg)
            }
            return Key(verifiers: verifiers, kid: kid, source: source)
        }
    }

    /// Algorithms a token may use. `none` never is; HS* only with a configured shared secret.
    static let asymmetric: Set<String> = ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]
    static let shared: Set<String> = ["HS256", "HS384", "HS512"]

    var keys: [Key] = []

    /// The keys that may verify a token with this header.
    func candidates(alg: String, kid: String?) -> [Key] {
        keys.filter { key in
            key.algorithms.contains(alg) && (key.kid == nil || kid == nil || key.kid == kid)
        }
    }

    /// Reads `issuer`'s key files; a file that holds no usable key is an error naming it.
    static func load(_ issuer: AuthenticationConfiguration.JWTIssuer) async throws -> TokenKeys {
        var result = TokenKeys()
        for file in issuer.keys {
            let text: String
            do {
                text = try String(contentsOfFile: file, encoding: .utf8)
            } catch {
                throw TokenKeyError(file: file, "cannot read: \(error.localizedDescription)")
            }
            if text.contains("-----BEGIN") {
                result.keys += try await pemKeys(text, file: file)
            } else {
                result.keys += try await jwksKeys(text, file: file)
            }
        }
        if let secret = issuer.sharedSecret {
            // RFC 7518 section 3.2: a key at least as long as the hash (jwt-kit insists).
            for (name, digest, bytes) in [("HS256", DigestAlgorithm.sha256, 32), ("HS384", .sha384, 48), ("HS512", .sha512, 64)]
            where secret.utf8.count >= bytes {
                let collection = JWTKeyCollection()
                await collection.add(hmac: HMACKey(from: secret), digestAlgorithm: digest)
                result.keys.append(try await Key.make(collection, algorithms: [name], kid: nil, source: "sharedSecret"))
            }
        }
        return result
    }

    /// One PEM file: a public key (RSA, EC P-256 or P-384, Ed25519) or a certificate (RSA, EC).
    private static func pemKeys(_ text: String, file: String) async throws -> [Key] {
        let collection = JWTKeyCollection()
        let algorithms: Set<String>
        if text.contains("BEGIN CERTIFICATE") {
            if let key = try? Insecure.RSA.PublicKey(certificatePEM: text) {
                return try await rsaKeys(key, source: file)
            } else if let key = try? ES256PublicKey(certificate: text) {
                await collection.add(ecdsa: key)
                algorithms = ["ES256"]
            } else if let key = try? ES384PublicKey(certificate: text) {
                await collection.add(ecdsa: key)
                algorithms = ["ES384"]
            } else {
                throw TokenKeyError(file: file, "not an RSA, P-256 or P-384 certificate")
            }
        } else if text.contains("PRIVATE KEY") {
            throw TokenKeyError(file: file, "holds a private key: give the issuer's public key or certificate")
        } else if let key = try? Insecure.RSA.PublicKey(pem: text) {
            return try await rsaKeys(key, source: file)
        } else if let key = try? ES256PublicKey(pem: text) {
            await collection.add(ecdsa: key)
            algorithms = ["ES256"]
        } else if let key = try? ES384PublicKey(pem: text) {
            await collection.add(ecdsa: key)
            algorithms = ["ES384"]
        } else if let key = try? EdDSA.PublicKey(pem: text) {
            await collection.add(eddsa: key)
            algorithms = ["EdDSA"]
        } else {
            throw TokenKeyError(file: file, "not an RSA, EC P-256, EC P-384 or Ed25519 public key")
        }
        return [try await Key.make(collection, algorithms: algorithms, kid: nil, source: file)]
    }

    /// An RSA key verifies RS256, RS384 and RS512: one collection per digest.
    private static func rsaKeys(_ key: Insecure.RSA.PublicKey, kid: String? = nil, source: String) async throws -> [Key] {
        var keys: [Key] = []
        for (name, digest) in [("RS256", DigestAlgorithm.sha256), ("RS384", .sha384), ("RS512", .sha512)] {
            let collection = JWTKeyCollection()
            await collection.add(rsa: key, digestAlgorithm: digest)
            keys.append(try await Key.make(collection, algorithms: [name], kid: kid, source: source))
        }
        return keys
    }

    /// A JWKS file (`{"keys": [...]}`): RSA, EC and OKP (Ed25519) keys; symmetric ones are refused.
    private static func jwksKeys(_ text: String, file: String) async throws -> [Key] {
        let jwks: JWKS
        do {
            jwks = try JSONDecoder().decode(JWKS.self, from: Data(text.utf8))
        } catch {
            throw TokenKeyError(file: file, "neither PEM nor a JWKS document: \(error)")
        }
        guard !jwks.keys.isEmpty else { throw TokenKeyError(file: file, "the JWKS has no keys") }
        var keys: [Key] = []
        for (index, original) in jwks.keys.enumerated() {
            var jwk = original
            let kid = jwk.keyIdentifier?.string
            if jwk.keyIdentifier == nil { jwk.keyIdentifier = JWKIdentifier(string: "custody-\(index)") }
            var algorithms: Set<String>
            switch jwk.keyType {
            case .rsa: algorithms = ["RS256", "RS384", "RS512"]
            case .ecdsa: algorithms = jwk.curve?.rawValue == "P-384" ? ["ES384"] : ["ES256"]
            case .octetKeyPair: algorithms = ["EdDSA"]
            default:
                throw TokenKeyError(file: file, "key \(index): only RSA, EC and OKP keys (a shared secret goes in sharedSecret)")
            }
            if let alg = jwk.algorithm?.rawValue {
                guard asymmetric.contains(alg) else {
                    throw TokenKeyError(file: file, "key \(index): algorithm \(alg) is not accepted (\(asymmetric.sorted().joined(separator: ", ")))")
                }
                algorithms = [alg]
            }
            let collection = JWTKeyCollection()
            do {
                try await collection.add(jwk: jwk)
            } catch {
                throw TokenKeyError(file: file, "key \(index): \(error)")
            }
            do {
                keys.append(try await Key.make(
                    collection, identifier: jwk.keyIdentifier, algorithms: algorithms, kid: kid, source: file))
            } catch {
                throw TokenKeyError(file: file, "key \(index): \(error)")
            }
        }
        return keys
    }
}

/// A key file that cannot be used, with its name.
public struct TokenKeyError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var problem: String

    init(file: String, _ problem: String) {
        self.file = file
        self.problem = problem
    }

    public var description: String { "\(file): \(problem)" }
}
