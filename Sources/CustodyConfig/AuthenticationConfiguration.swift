/// Sign-in without certificates (the `authentication:` section): JSON Web Tokens from
/// identity providers, and a webhook that decides. The ways in are tried in a fixed order:
/// the client certificate, a token when the CONNECT carries one, the password file, the
/// webhook (README: "Sign-in").
public struct AuthenticationConfiguration: Sendable, Equatable {
    /// One trusted token issuer.
    public struct JWTIssuer: Sendable, Equatable {
        /// The `iss` claim a token must carry.
        public var issuer: String
        /// A value the token's `aud` must hold.
        public var audience: String
        /// JWKS files (`.json`) and PEM public keys or certificates; read at start and on SIGHUP.
        public var keys: [String]
        /// The claim that names the client (its authentication name, the session owner).
        public var authenticationNameClaim: String = "sub"
        /// Claim -> client attribute, for client groups.
        public var attributeClaims: [String: String] = [:]
        /// How far `exp`, `nbf` and `iat` may be off the broker's clock.
        public var clockSkewSeconds: Int = 60
        /// HS256/384/512 with this secret; without one, HS* (and `none`) are never accepted.
        public var sharedSecret: String?

        public static let clockSkewRange = 0...3600

        public init(issuer: String, audience: String, keys: [String] = []) {
            self.issuer = issuer
            self.audience = audience
            self.keys = keys
        }
    }

    /// The endpoint that decides CONNECTs no other way in decided.
    public struct Webhook: Sendable, Equatable {
        public var endpoint: String
        public var timeoutMilliseconds: Int = 2000
        /// Allow and deny answers are kept this long per credentials (their SHA-256); 0: off.
        public var cacheSeconds: Int = 60
        /// Sent with every request (values with `${env:NAME}` resolved when read).
        public var headers: [String: String] = [:]
        /// `http://` to a host that is not loopback.
        public var allowInsecure = false

        public static let timeoutRange = 10...60_000
        public static let cacheRange = 0...86_400

        public init(endpoint: String) {
            self.endpoint = endpoint
        }
    }

    public var jwt: [JWTIssuer] = []
    public var webhook: Webhook?

    public init() {}

    public var isEmpty: Bool { jwt.isEmpty && webhook == nil }
}
