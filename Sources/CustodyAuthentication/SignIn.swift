import CustodyConfig
import CustodyModel
import Foundation
import LedgerCore

/// The identity authority with every way in (README: "Sign-in"), tried in this order; the
/// first that applies decides:
/// 1. the client certificate, when the client sent one (the registry's validation scheme);
/// 2. a JSON Web Token, when the CONNECT carries one (Authentication Method `CUSTOM-JWT` or
///    `OAUTH2-JWT` with the token as Authentication Data, or a token as the password);
/// 3. the password file, when it knows the Username (or no webhook follows);
/// 4. the webhook.
/// The registry (`clients:`) still has its say on a name a token or the webhook proved: a
/// disabled client stays out.
public struct SignIn: IdentityAuthority {
    public let registry: Authenticator
    public let tokens: TokenVerifier?
    public let webhook: WebhookAuthenticator?

    /// The Authentication Methods a token comes with (Event Grid's, and the OAuth 2 name).
    public static let tokenMethods: Set<String> = ["CUSTOM-JWT", "OAUTH2-JWT"]

    public init(registry: Authenticator, tokens: TokenVerifier?, webhook: WebhookAuthenticator?) {
        self.registry = registry
        self.tokens = tokens
        self.webhook = webhook
    }

    enum Way {
        case registry
        case token(String)
        case webhook
    }

    /// Which way in decides these credentials.
    func way(_ credentials: ConnectCredentials) -> Way {
        if credentials.certificate != nil { return .registry }
        if tokens != nil, let token = Self.token(in: credentials) { return .token(token) }
        // An authentication method no token takes: the webhook may know it; else it is refused (0x8C).
        if credentials.authenticationMethod != nil { return webhook != nil ? .webhook : .registry }
        if let passwords = registry.passwords, webhook == nil || credentials.username.map(passwords.contains) == true {
            return .registry
        }
        return webhook != nil ? .webhook : .registry
    }

    /// The token of a CONNECT: its Authentication Data under a token method, or a password
    /// that is a JWS compact token (three base64url parts, the header a JSON object).
    static func token(in credentials: ConnectCredentials) -> String? {
        if let method = credentials.authenticationMethod {
            // A token method without data is a token that proves nothing (0x87), not an unknown method.
            guard tokenMethods.contains(method.uppercased()) else { return nil }
            return String(decoding: credentials.authenticationData ?? [], as: UTF8.self)
        }
        guard let password = credentials.password, password.count > 20, password.starts(with: Array("eyJ".utf8)),
            password.filter({ $0 == UInt8(ascii: ".") }).count == 2,
            let text = String(validating: password, as: UTF8.self)
        else { return nil }
        return text
    }

    /// At once: the registry, or a token (its check is CPU only: no hop off the event loop).
    public func decide(_ credentials: ConnectCredentials) -> IdentityDecision {
        switch way(credentials) {
        case .token(let token): tokenDecision(token, credentials)
        case .registry, .webhook: registry.decide(credentials)
        }
    }

    /// Only the webhook is asked elsewhere.
    public func asksElsewhere(_ credentials: ConnectCredentials) -> Bool {
        if case .webhook = way(credentials) { return true }
        return false
    }

    func tokenDecision(_ token: String, _ credentials: ConnectCredentials) -> IdentityDecision {
        let fallback = AuthenticationName(unchecked: credentials.username ?? credentials.sessionName)
        switch tokens!.verify(token) {
        case .refused(let why):
            // v5 enhanced authentication and the password alike: 0x87 (3.1.1: 5).
            return IdentityDecision(
                authenticationName: fallback, verdict: .clientAuthenticationError, detail: "token refused: \(why)",
                refusal: .notAuthorized, method: .jwt)
        case .accepted(let name, let attributes, let expiration):
            if let username = credentials.username, !username.isEmpty, AuthenticationName(unchecked: username) != name {
                return IdentityDecision(
                    authenticationName: fallback, verdict: .clientAuthenticationError,
                    detail: "the Username is not the token's name claim", refusal: .notAuthorized, method: .jwt)
            }
            return registry.admit(IdentityDecision(
                authenticationName: name, verdict: .authenticated, detail: "token verified", method: .jwt,
                attributes: attributes, expiration: expiration))
        }
    }

    public func decideElsewhere(_ credentials: ConnectCredentials) async -> IdentityDecision {
        let fallback = AuthenticationName(unchecked: credentials.username ?? credentials.sessionName)
        switch way(credentials) {
        case .registry, .token:
            return decide(credentials)
        case .webhook:
            switch await webhook!.ask(credentials) {
            case .allow(let name, let attributes, let expiration):
                return registry.admit(IdentityDecision(
                    authenticationName: name, verdict: .authenticated, detail: "allowed by the webhook", method: .webhook,
                    attributes: attributes, expiration: expiration))
            case .deny(let reason):
                return IdentityDecision(
                    authenticationName: fallback, verdict: .clientAuthenticationError, detail: "webhook: \(reason)",
                    refusal: .notAuthorized, method: .webhook)
            case .failed(let why):
                return IdentityDecision(
                    authenticationName: fallback, verdict: .clientAuthenticationError, detail: "webhook unavailable: \(why)",
                    refusal: .serverUnavailable, method: .webhook)
            }
        }
    }

    public func reconsider(_ credentials: ConnectCredentials, decided: IdentityDecision) -> IdentityDecision {
        switch decided.method {
        case .jwt, .webhook: registry.admit(decided)
        default: registry.decide(credentials)
        }
    }
}
