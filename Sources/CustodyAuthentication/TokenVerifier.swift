import CustodyConfig
import CustodyModel
import LedgerCore
import Authorization
import Foundation
import JWTKit

/// The claims of a token: the registered ones with jwt-kit's types, and every claim by
/// name for the authentication name and the attributes. The checks that depend on the
/// issuer's settings (audience, clock skew) are `TokenVerifier`'s.
struct TokenClaims: JWTPayload {
    var issuer: IssuerClaim?
    var audience: AudienceClaim?
    var expiration: ExpirationClaim?
    var notBefore: NotBeforeClaim?
    var issuedAt: IssuedAtClaim?
    var all: [String: ClaimValue] = [:]

    private struct Name: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// The decoder's `userInfo` under this key names the claims kept in `all` (every issuer's
    /// name and attribute claims); without it every claim is kept.
    static let wanted = CodingUserInfoKey(rawValue: "custody.wantedClaims")!

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Name.self)
        issuer = try container.decodeIfPresent(IssuerClaim.self, forKey: Name(stringValue: "iss"))
        audience = try container.decodeIfPresent(AudienceClaim.self, forKey: Name(stringValue: "aud"))
        expiration = try container.decodeIfPresent(ExpirationClaim.self, forKey: Name(stringValue: "exp"))
        notBefore = try container.decodeIfPresent(NotBeforeClaim.self, forKey: Name(stringValue: "nbf"))
        issuedAt = try container.decodeIfPresent(IssuedAtClaim.self, forKey: Name(stringValue: "iat"))
        if let wanted = decoder.userInfo[Self.wanted] as? Set<String> {
            for name in wanted where container.contains(Name(stringValue: name)) {
                all[name] = (try? container.decode(ClaimValue.self, forKey: Name(stringValue: name))) ?? .other
            }
        } else {
            for key in container.allKeys {
                all[key.stringValue] = (try? container.decode(ClaimValue.self, forKey: key)) ?? .other
            }
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Name.self)
        for (name, value) in all { try container.encode(value, forKey: Name(stringValue: name)) }
    }

    /// Nothing here: the issuer's audience and clock skew are checked by `TokenVerifier`.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// One claim's value, as far as attributes care.
enum ClaimValue: Codable, Sendable, Equatable {
    case string(String)
    case bool(Bool)
    case number(Double)
    case strings([String])
    case other

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode([String].self) {
            self = .strings(value)
        } else {
            self = .other
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .strings(let value): try container.encode(value)
        case .other: try container.encodeNil()
        }
    }

    /// As a client attribute (Event Grid's types: string, integer, boolean as a string, list of strings).
    var attribute: AttributeValue? {
        switch self {
        case .string(let value): .string(value)
        case .bool(let value): .bool(value)
        case .number(let value): value.rounded() == value && abs(value) < 1e15 ? .int(Int(value)) : .string("\(value)")
        case .strings(let value): .strings(value)
        case .other: nil
        }
    }
}

/// What a token proved, or why it proved nothing (for the log: never the token itself).
public enum TokenOutcome: Sendable, Equatable {
    case accepted(name: AuthenticationName, attributes: [String: AttributeValue], expiration: Double?)
    case refused(String)
}

/// Checks tokens against the configured issuers: the signature (jwt-kit, with the issuer's
/// keys and only the algorithms it allows), then `iss`, `aud`, `exp`, `nbf`, `iat` within the
/// clock skew, then the name claim. Made at start and on each reload. The check is
/// synchronous and reads the token once: jwt-kit parses it (header, claims, signature) and
/// the issuer's key, as jwt-kit's algorithm, verifies the signature over its first two parts.
public struct TokenVerifier: Sendable {
    struct Issuer: Sendable {
        var settings: AuthenticationConfiguration.JWTIssuer
        var keys: TokenKeys
    }

    let issuers: [Issuer]
    /// jwt-kit's parser, with a decoder that keeps only the claims some issuer reads.
    let parser: DefaultJWTParser
    /// Tokens parsed before (their signatures are checked every time all the same).
    let parsed = ParsedTokens()

    init(issuers: [Issuer]) {
        self.issuers = issuers
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        decoder.userInfo[TokenClaims.wanted] = issuers.reduce(into: Set<String>()) { wanted, issuer in
            wanted.insert(issuer.settings.authenticationNameClaim)
            wanted.formUnion(issuer.settings.attributeClaims.keys)
        }
        parser = DefaultJWTParser(jsonDecoder: decoder)
    }

    /// Reads every issuer's keys; a key file that cannot be used throws, naming it.
    public static func load(_ issuers: [AuthenticationConfiguration.JWTIssuer]) async throws -> TokenVerifier {
        var loaded: [Issuer] = []
        for settings in issuers {
            loaded.append(Issuer(settings: settings, keys: try await TokenKeys.load(settings)))
        }
        return TokenVerifier(issuers: loaded)
    }

    /// How many keys were read (for the start-up line).
    public var keyCount: Int { issuers.reduce(0) { $0 + $1.keys.keys.count } }

    public func verify(_ token: String, now: Double = Date().timeIntervalSince1970) -> TokenOutcome {
        let bytes = Array(token.utf8)
        guard let (signingInput, signature) = ParsedTokens.split(bytes) else {
            return .refused("malformed token: not three base64url parts")
        }
        let header: JWTHeader
        let claims: TokenClaims
        if let known = parsed.lookUp(signingInput) {
            (header, claims) = (known.header, known.claims)
        } else {
            do {
                (header, claims, _) = try parser.parse(bytes, as: TokenClaims.self)
            } catch {
                return .refused("malformed token: \(error)")
            }
            parsed.keep(signingInput, ParsedTokens.Parsed(header: header, claims: claims))
        }
        let alg = header.alg ?? "none"
        guard alg.lowercased() != "none" else { return .refused("unsigned token (alg none) is never accepted") }
        guard let iss = claims.issuer?.value else { return .refused("the token has no iss") }
        guard let issuer = issuers.first(where: { $0.settings.issuer == iss }) else {
            return .refused("issuer '\(iss)' is not configured")
        }
        let allowed = TokenKeys.asymmetric.union(issuer.settings.sharedSecret == nil ? [] : TokenKeys.shared)
        guard allowed.contains(alg) else {
            return .refused("algorithm \(alg) is not accepted for issuer '\(iss)' (\(allowed.sorted().joined(separator: ", ")))")
        }
        let candidates = issuer.keys.candidates(alg: alg, kid: header.kid)
        guard !candidates.isEmpty else {
            return .refused("no key of issuer '\(iss)' verifies \(alg)\(header.kid.map { " with kid \($0)" } ?? "")")
        }
        var failure = "signature verification failed"
        for key in candidates {
            do {
                if try key.verifiers[alg]!.verify(signature, signs: signingInput) {
                    return check(claims, issuer.settings, now: now)
                }
                failure = "signature not verified by \(key.source)"
            } catch {
                failure = "signature not verified by \(key.source): \(error)"
            }
        }
        return .refused(failure)
    }

    /// The registered claims within the skew, and the name claim.
    func check(_ claims: TokenClaims, _ settings: AuthenticationConfiguration.JWTIssuer, now: Double) -> TokenOutcome {
        let skew = Double(settings.clockSkewSeconds)
        guard let audience = claims.audience, audience.value.contains(settings.audience) else {
            return .refused("the audience is not '\(settings.audience)'")
        }
        guard let exp = claims.expiration?.value.timeIntervalSince1970 else { return .refused("the token has no exp") }
        guard exp + skew > now else { return .refused("the token expired \(Int(now - exp))s ago") }
        if let nbf = claims.notBefore?.value.timeIntervalSince1970, nbf - skew > now {
            return .refused("the token is not valid before \(Int(nbf - now))s from now")
        }
        if let iat = claims.issuedAt?.value.timeIntervalSince1970, iat - skew > now {
            return .refused("the token was issued \(Int(iat - now))s in the future")
        }
        guard case .string(let text)? = claims.all[settings.authenticationNameClaim] else {
            return .refused("the claim '\(settings.authenticationNameClaim)' is missing or not a string")
        }
        guard let name = try? AuthenticationName(validating: text) else {
            return .refused("the claim '\(settings.authenticationNameClaim)' is not a valid authentication name (1-128 characters)")
        }
        var attributes: [String: AttributeValue] = [:]
        for (claim, attribute) in settings.attributeClaims {
            if let value = claims.all[claim]?.attribute { attributes[attribute] = value }
        }
        return .accepted(name: name, attributes: attributes, expiration: exp + skew)
    }
}
