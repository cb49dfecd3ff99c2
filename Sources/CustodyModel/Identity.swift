import Authorization
import LedgerCore

/// What a verified client certificate says about its holder (the TLS layer fills it in).
public struct CertificateIdentity: Sendable, Equatable {
    /// The subject's common name (CN).
    public var subjectCommonName: String?
    public var dnsNames: [String]
    public var uris: [String]
    /// IP addresses of the subject alternative names, in their usual text form.
    public var ipAddresses: [String]
    public var emails: [String]
    /// SHA-256 of the certificate's DER bytes, 64 lowercase hex digits.
    public var thumbprint: String
    /// Whether the certificate chains to a trusted CA. A self-signed certificate (false)
    /// proves only its thumbprint: its names could say anything.
    public var chainVerified: Bool
    /// The certificate as PEM (for the authentication webhook).
    public var chainPEM: [String]

    public init(
        subjectCommonName: String? = nil, dnsNames: [String] = [], uris: [String] = [], ipAddresses: [String] = [],
        emails: [String] = [], thumbprint: String, chainVerified: Bool = true, chainPEM: [String] = []
    ) {
        self.chainPEM = chainPEM
        self.chainVerified = chainVerified
        self.subjectCommonName = subjectCommonName
        self.dnsNames = dnsNames
        self.uris = uris
        self.ipAddresses = ipAddresses
        self.emails = emails
        self.thumbprint = thumbprint
    }
}

/// The credentials of one CONNECT.
public struct ConnectCredentials: Sendable {
    public var username: String?
    public var password: [UInt8]?
    /// The ClientID: the authentication name of last resort (a single-session client).
    public var sessionName: String
    /// nil on a plain TCP or WebSocket listener, or when the client sent none.
    public var certificate: CertificateIdentity?
    /// MQTT 5 enhanced authentication: the CONNECT's (or a re-authenticating AUTH's)
    /// Authentication Method and Data.
    public var authenticationMethod: String?
    public var authenticationData: [UInt8]?
    /// The client certificate chain as PEM, leaf first, when the client sent one (for the webhook).
    public var certificateChainPEM: [String]
    /// The peer as `IP:port`, and the listener it came in on (`mqtt 127.0.0.1:1883`), for the webhook.
    public var remoteAddress: String
    public var listener: String

    public init(
        username: String?, password: [UInt8]?, sessionName: String, certificate: CertificateIdentity?,
        authenticationMethod: String? = nil, authenticationData: [UInt8]? = nil, certificateChainPEM: [String] = [],
        remoteAddress: String = "", listener: String = ""
    ) {
        self.username = username
        self.password = password
        self.sessionName = sessionName
        self.certificate = certificate
        self.authenticationMethod = authenticationMethod
        self.authenticationData = authenticationData
        self.certificateChainPEM = certificateChainPEM
        self.remoteAddress = remoteAddress
        self.listener = listener
    }
}

/// Which way in decided a CONNECT (README: "Sign-in").
public enum SignInMethod: String, Sendable, Equatable {
    /// No authority: the Username (or ClientID) is believed.
    case none
    case certificate
    case passwordFile
    case jwt
    case webhook
    /// The client registry alone (a registered client proven by nothing else is refused).
    case registry
}

/// Who a CONNECT is, and whether it proved it (DESIGN.md §1, rule R7).
public struct IdentityDecision: Sendable, Equatable {
    /// What a refused CONNECT is told (v5 CONNACK; the encoder maps it to 3.1.1's 5, 4 or 3).
    public enum Refusal: Sendable, Equatable {
        /// 0x87 Not authorized.
        case notAuthorized
        /// 0x86 Bad User Name or Password.
        case badUserNameOrPassword
        /// 0x8C Bad authentication method: a method no configured way in takes.
        case badAuthenticationMethod
        /// 0x88 Server unavailable: the authority could not be asked (the webhook timed out,
        /// failed or answered nonsense). Never an allow.
        case serverUnavailable
    }

    public var authenticationName: AuthenticationName
    public var verdict: IdentityVerdict
    /// Why, for the log line (never sent to the client).
    public var detail: String
    /// What the client is told when refused.
    public var refusal: Refusal
    /// Which way in decided.
    public var method: SignInMethod
    /// Attributes for client groups from a token's claims or the webhook's answer; they
    /// override the registry's attributes of the same key.
    public var attributes: [String: AttributeValue]
    /// When the proof runs out (a token's `exp`, the webhook's `expiration`), as seconds
    /// since 1970: the connection ends then unless the client re-authenticates.
    public var expiration: Double?

    /// The refusal is about the Username or password themselves (MQTT 5: 0x86 Bad User Name
    /// or Password); other refusals are 0x87 Not authorized.
    public var badUserNameOrPassword: Bool {
        get { refusal == .badUserNameOrPassword }
        set { refusal = newValue ? .badUserNameOrPassword : .notAuthorized }
    }

    public init(
        authenticationName: AuthenticationName, verdict: IdentityVerdict, detail: String,
        badUserNameOrPassword: Bool = false, refusal: Refusal? = nil, method: SignInMethod = .none,
        attributes: [String: AttributeValue] = [:], expiration: Double? = nil
    ) {
        self.authenticationName = authenticationName
        self.verdict = verdict
        self.detail = detail
        self.refusal = refusal ?? (badUserNameOrPassword ? .badUserNameOrPassword : .notAuthorized)
        self.method = method
        self.attributes = attributes
        self.expiration = expiration
    }
}

/// Who a CONNECT is (DESIGN.md R7): asked for every CONNECT with its Username, password,
/// ClientID, TLS client certificate and authentication method. The executable supplies it
/// (CustodyConfig's `Authenticator`, or CustodyAuthentication's `SignIn` with tokens and a
/// webhook); without one every Username is believed.
public protocol IdentityAuthority: Sendable {
    /// The decision, when it can be made at once (a certificate, the password file, the registry).
    func decide(_ credentials: ConnectCredentials) -> IdentityDecision
    /// True when this CONNECT's decision needs `decideElsewhere` (a token's signature, a
    /// webhook): the front then waits for it without blocking its event loop.
    func asksElsewhere(_ credentials: ConnectCredentials) -> Bool
    func decideElsewhere(_ credentials: ConnectCredentials) async -> IdentityDecision
    /// The registry was reloaded: decide again, at once, for a connection that `decided`
    /// let in. A decision made elsewhere is not asked again: only the registry's word on
    /// its name (disabled, no longer registered) is.
    func reconsider(_ credentials: ConnectCredentials, decided: IdentityDecision) -> IdentityDecision
}

extension IdentityAuthority {
    public func asksElsewhere(_ credentials: ConnectCredentials) -> Bool { false }
    public func decideElsewhere(_ credentials: ConnectCredentials) async -> IdentityDecision { decide(credentials) }
    public func reconsider(_ credentials: ConnectCredentials, decided: IdentityDecision) -> IdentityDecision {
        decide(credentials)
    }
}
