import CustodyModel
import LedgerCore

extension CertificateIdentity {
    func values(of source: AlternativeAuthenticationNameSource) -> [String] {
        switch source {
        case .clientCertificateSubject: subjectCommonName.map { [$0] } ?? []
        case .clientCertificateDns: dnsNames
        case .clientCertificateUri: uris
        case .clientCertificateIp: ipAddresses
        case .clientCertificateEmail: emails
        }
    }
}

/// Decides identities from the configuration: the password file, the client registry and
/// the certificate validation schemes. Without any of them every Username is believed
/// (the development default).
public struct Authenticator: Sendable {
    public let namespace: NamespaceConfiguration
    public let passwords: PasswordFile?
    private let clients: [AuthenticationName: ClientRecord]

    public init(configuration: CustodyConfiguration, passwords: PasswordFile?) {
        namespace = configuration.namespace
        self.passwords = passwords
        var clients: [AuthenticationName: ClientRecord] = [:]
        for record in configuration.clients { clients[record.authenticationName] = record }
        self.clients = clients
    }

    public func client(_ name: AuthenticationName) -> ClientRecord? { clients[name] }

    /// The authentication name of a CONNECT: its Username; without one, the first
    /// alternative source its certificate has (a CA-issued one: a self-signed certificate's
    /// names prove nothing); without that, the session name.
    public func authenticationName(of credentials: ConnectCredentials) -> AuthenticationName {
        if let username = credentials.username { return AuthenticationName(unchecked: username) }
        if let certificate = credentials.certificate, certificate.chainVerified {
            for source in namespace.alternativeAuthenticationNameSources {
                if let value = certificate.values(of: source).first { return AuthenticationName(unchecked: value) }
            }
        }
        return AuthenticationName(unchecked: credentials.sessionName)
    }

    public func decide(_ credentials: ConnectCredentials) -> IdentityDecision {
        let name = authenticationName(of: credentials)
        var method: SignInMethod = credentials.certificate != nil ? .certificate : passwords != nil ? .passwordFile : .registry
        func decision(_ verdict: IdentityVerdict, _ detail: String, password: Bool = false) -> IdentityDecision {
            IdentityDecision(
                authenticationName: name, verdict: verdict, detail: detail, badUserNameOrPassword: password, method: method)
        }
        guard name.isValid else {
            return decision(
                .authenticationFailed, "the authentication name is empty, over 128 characters or not UTF-8", password: true)
        }
        var proven = false
        if let passwords {
            guard let username = credentials.username, let password = credentials.password else {
                return decision(.authenticationFailed, "a username and password are required", password: true)
            }
            guard passwords.verify(username: username, password: password) else {
                return decision(.authenticationFailed, "wrong username or password", password: true)
            }
            proven = true
        }
        let record = clients[name]
        if record == nil && namespace.registeredClientsOnly {
            return decision(.unknownClient, "not a registered client")
        }
        if let record {
            guard record.state == .enabled else { return decision(.clientDisabled, "the client is disabled") }
            if let certificate = credentials.certificate {
                if let problem = Self.check(certificate, against: record) {
                    return decision(.authenticationFailed, problem)
                }
                proven = true
            }
            // A registered client must prove who it is: by its certificate or its password.
            guard proven else {
                return decision(.authenticationFailed, "a registered client needs a client certificate or a password")
            }
        }
        if !proven { method = .none }
        return decision(.authenticated, proven ? "authenticated" : "believed (no registry, no password file)")
    }

    /// A name another way in proved (a token, the webhook): the registry may still refuse it
    /// (disabled, or not registered where only registered clients may connect).
    public func admit(_ proven: IdentityDecision) -> IdentityDecision {
        guard proven.verdict == .authenticated else { return proven }
        var decision = proven
        let record = clients[proven.authenticationName]
        if record == nil && namespace.registeredClientsOnly {
            decision.verdict = .unknownClient
            decision.detail = "not a registered client"
        } else if let record, record.state != .enabled {
            decision.verdict = .clientDisabled
            decision.detail = "the client is disabled"
        }
        return decision
    }

    /// nil when `certificate` proves `record`'s identity under its validation scheme.
    static func check(_ certificate: CertificateIdentity, against record: ClientRecord) -> String? {
        let name = record.authenticationName
        func matches(_ values: [String], _ field: String) -> String? {
            values.contains { AuthenticationName(unchecked: $0) == name }
                ? nil : "the certificate's \(field) does not match the authentication name"
        }
        if record.validationScheme != .thumbprintMatch && !certificate.chainVerified {
            return "a certificate not issued by a trusted CA proves only its thumbprint (use ThumbprintMatch)"
        }
        switch record.validationScheme {
        case .subjectMatchesAuthenticationName:
            return matches(certificate.subjectCommonName.map { [$0] } ?? [], "subject")
        case .dnsMatchesAuthenticationName:
            return matches(certificate.dnsNames, "DNS names")
        case .uriMatchesAuthenticationName:
            return matches(certificate.uris, "URIs")
        case .ipMatchesAuthenticationName:
            return matches(certificate.ipAddresses, "IP addresses")
        case .emailMatchesAuthenticationName:
            return matches(certificate.emails, "e-mail addresses")
        case .thumbprintMatch:
            return record.allowedThumbprints.contains(certificate.thumbprint.lowercased())
                ? nil : "the certificate's thumbprint is not one of the client's"
        }
    }
}
