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

    public init(
        subjectCommonName: String? = nil, dnsNames: [String] = [], uris: [String] = [], ipAddresses: [String] = [],
        emails: [String] = [], thumbprint: String, chainVerified: Bool = true
    ) {
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

    public init(username: String?, password: [UInt8]?, sessionName: String, certificate: CertificateIdentity?) {
        self.username = username
        self.password = password
        self.sessionName = sessionName
        self.certificate = certificate
    }
}

/// Who a CONNECT is, and whether it proved it (DESIGN.md §1, rule R7).
public struct IdentityDecision: Sendable, Equatable {
    public var authenticationName: AuthenticationName
    public var verdict: IdentityVerdict
    /// Why, for the log line (never sent to the client).
    public var detail: String
    /// The refusal is about the Username or password themselves (MQTT 5: 0x86 Bad User Name
    /// or Password); other refusals are 0x87 Not authorized.
    public var badUserNameOrPassword: Bool

    public init(
        authenticationName: AuthenticationName, verdict: IdentityVerdict, detail: String,
        badUserNameOrPassword: Bool = false
    ) {
        self.authenticationName = authenticationName
        self.verdict = verdict
        self.detail = detail
        self.badUserNameOrPassword = badUserNameOrPassword
    }
}

/// Who a CONNECT is (DESIGN.md R7): asked for every CONNECT with its Username, password,
/// ClientID and TLS client certificate. The executable supplies it (CustodyConfig's
/// `Authenticator`); without one every Username is believed.
public protocol IdentityAuthority: Sendable {
    func decide(_ credentials: ConnectCredentials) -> IdentityDecision
}
