import Foundation
import CustodyModel
import LedgerCore

/// Everything `custody` can be told, by flags or by the YAML file (`custody --config FILE`).
/// Defaults are the zero-config development broker: LMDB in `./data`, MQTT on
/// 127.0.0.1:1883, every Username believed.
public struct CustodyConfiguration: Sendable, Equatable {
    public var dataDir: String = "./data"
    public var listeners: [ListenerConfiguration] = [ListenerConfiguration(kind: .mqtt, host: "127.0.0.1", port: 1883)]
    /// The ledger as a service: a Unix domain socket (mode 0660) other fronts (Mosquitto with
    /// the custody plugin) claim and release sessions through; nil: none. With it, `listeners`
    /// may be empty (custody only serves as a ledger).
    public var ledgerSocket: String?
    /// A cluster on etcd (ClusterConfiguration.swift); nil: this node alone decides.
    public var cluster: ClusterConfiguration?
    public var namespace = NamespaceConfiguration()
    public var clients: [ClientRecord] = []
    /// A Mosquitto-style password file (`user:$7$…` lines, as `mosquitto_passwd` writes).
    public var passwordFile: String?
    public var ledgerMapSizeMiB: Int = 65_536
    /// Checkpoints, retention and the archive: the `ledger:` section.
    public var ledger = LedgerConfiguration()
    public var connectTimeoutSeconds: Int = 10
    /// Longest keep-alive a client may use, 1-65535 s; nil: the client's own. v5 clients asking
    /// more (or 0) are told this one (Server Keep Alive); v3.1.1 clients asking more are refused.
    public var maxKeepAliveSeconds: Int?
    public var logLevel: LogLevel = .info
    public var logFormat: LogFormat = .text
    /// Where `/metrics` is served; nil: not served.
    public var metrics: HostPort?
    /// `metrics` may be a non-loopback address (otherwise startup refuses one).
    public var metricsAllowRemote = false
    /// Authentication names whose connections may subscribe to `$custody/...` (lifecycle
    /// events); everyone else gets SUBACK 0x87 for such filters.
    public var eventSubscribers: [AuthenticationName] = []
    /// What one client may take of the broker.
    public var limits = LimitsConfiguration()
    /// What clients may publish and subscribe to.
    public var authorization = AuthorizationConfiguration()
    /// Tokens and the webhook: sign-in without certificates.
    public var authentication = AuthenticationConfiguration()
    /// Messages and lifecycle events routed as CloudEvents to HTTP endpoints.
    public var routes: [RouteConfiguration] = []

    public init() {}

    public enum LogLevel: String, Sendable, CaseIterable {
        case trace, debug, info, notice, warning, error, critical
    }

    public enum LogFormat: String, Sendable, CaseIterable {
        case text, json
    }

    /// The namespace policy the ledger enforces.
    public func policy() throws -> NamespacePolicy {
        try NamespacePolicy(
            maximumClientSessionsPerAuthenticationName: namespace.maximumClientSessionsPerAuthenticationName,
            maximumSessionExpiryInHours: namespace.maximumSessionExpiryInHours)
    }
}

public struct ListenerConfiguration: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// MQTT over TCP.
        case mqtt
        /// MQTT over TLS.
        case mqtts
        /// MQTT over WebSocket (path /mqtt, subprotocol mqtt).
        case ws
        /// HTTP publish (`POST /mqtt/messages?topic=T`), plain HTTP/1.1.
        case http
        /// HTTP publish over TLS (the certificate and key as for mqtts).
        case https

        /// Whether it takes a certificate and a private key.
        public var isTLS: Bool { self == .mqtts || self == .https }
        /// Whether it is an HTTP publish listener rather than an MQTT one.
        public var isHTTPPublish: Bool { self == .http || self == .https }

        public var defaultPort: Int {
            switch self {
            case .mqtt: 1883
            case .mqtts: 8883
            case .ws: 8080
            case .http: 8088
            case .https: 8443
            }
        }
    }

    public enum ClientCertificates: String, Sendable, CaseIterable {
        /// Not asked for.
        case none
        /// Asked for; verified when sent.
        case optional
        /// The TLS handshake fails without a valid one.
        case required
    }

    public var kind: Kind
    public var host: String
    public var port: Int
    /// PEM files, for `mqtts`; paths are relative to the configuration file.
    public var certificate: String?
    public var privateKey: String?
    public var clientCertificates: ClientCertificates = .none
    /// CA certificates (PEM) client certificates must chain to. Empty with client
    /// certificates asked for: self-signed certificates are accepted and matched by thumbprint.
    public var trustedCertificates: [String] = []

    public init(kind: Kind, host: String, port: Int) {
        self.kind = kind
        self.host = host
        self.port = port
    }

    public var address: HostPort { HostPort(host: host, port: port) }
}

/// Event Grid's namespace settings for MQTT sessions.
public struct NamespaceConfiguration: Sendable, Equatable {
    public var maximumClientSessionsPerAuthenticationName: Int = NamespacePolicy.default.maximumClientSessionsPerAuthenticationName
    public var maximumSessionExpiryInHours: Int = NamespacePolicy.default.maximumSessionExpiryInHours
    /// Where the authentication name comes from when a CONNECT has no Username, in order.
    public var alternativeAuthenticationNameSources: [AlternativeAuthenticationNameSource] = []
    /// Only clients in `clients` may connect.
    public var registeredClientsOnly = false
    /// The namespace's name: routed CloudEvents' `source`; nil: the host name.
    public var name: String?

    public init() {}
}

public enum AlternativeAuthenticationNameSource: String, Sendable, CaseIterable {
    case clientCertificateSubject = "ClientCertificateSubject"
    case clientCertificateDns = "ClientCertificateDns"
    case clientCertificateUri = "ClientCertificateUri"
    case clientCertificateIp = "ClientCertificateIp"
    case clientCertificateEmail = "ClientCertificateEmail"
}

/// A registered client, as an Event Grid namespace client resource.
public struct ClientRecord: Sendable, Equatable {
    public enum State: String, Sendable, CaseIterable {
        case enabled = "Enabled"
        case disabled = "Disabled"
    }

    public enum ValidationScheme: String, Sendable, CaseIterable {
        case subjectMatchesAuthenticationName = "SubjectMatchesAuthenticationName"
        case dnsMatchesAuthenticationName = "DnsMatchesAuthenticationName"
        case uriMatchesAuthenticationName = "UriMatchesAuthenticationName"
        case ipMatchesAuthenticationName = "IpMatchesAuthenticationName"
        case emailMatchesAuthenticationName = "EmailMatchesAuthenticationName"
        case thumbprintMatch = "ThumbprintMatch"
    }

    public enum Attribute: Sendable, Equatable {
        case string(String)
        case int(Int)
        case bool(Bool)
        case strings([String])
    }

    public var authenticationName: AuthenticationName
    public var state: State = .enabled
    public var validationScheme: ValidationScheme = .subjectMatchesAuthenticationName
    /// SHA-256 thumbprints (64 hex digits, stored lowercase) for `ThumbprintMatch`: one or two.
    public var allowedThumbprints: [String] = []
    public var attributes: [String: Attribute] = [:]
    public var description: String?

    public init(authenticationName: AuthenticationName) {
        self.authenticationName = authenticationName
    }
}

/// How the ledger keeps itself for years (`ledger:`): checkpoints, and which events leave the
/// live LMDB for compressed segments under `DATA/archive/`.
public struct LedgerConfiguration: Sendable, Equatable {
    /// A checkpoint record every this many records; 0: none. `ledger.checkpointEvery`, `--checkpoint-every`.
    public var checkpointEvery = 100_000
    /// Events older than this many days are archived; nil: no age limit. `ledger.retention.days`, `--retention-days`.
    public var retentionDays: Int? = 30
    /// The live log is archived down to this many bytes (oldest first); nil: no size limit.
    /// `ledger.retention.maxLiveBytes`, `--retention-max-live-bytes`.
    public var maxLiveBytes: Int? = 8 << 30

    public static let checkpointEveryRange = 0...1_000_000_000
    public static let retentionDaysRange = 0...36_500

    public init() {}

    /// Whether anything is ever archived.
    public var archives: Bool { retentionDays != nil || maxLiveBytes != nil }

    /// The retention in microseconds, nil without an age limit.
    public var retentionMicroseconds: Int64? { retentionDays.map { Int64($0) * 86_400 * 1_000_000 } }

    /// A byte size: a plain number, or one with a unit (`512MiB`, `8GiB`, `1TiB`, `64KiB`, `100MB`).
    public static func parseBytes(_ text: String) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [(String, Int)] = [
            ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
            ("TB", 1_000_000_000_000), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000), ("kB", 1_000), ("B", 1),
        ]
        for (unit, factor) in units where trimmed.hasSuffix(unit) {
            let number = trimmed.dropLast(unit.count).trimmingCharacters(in: .whitespaces)
            guard let value = Int(number), value >= 0, value <= Int.max / factor else { return nil }
            return value * factor
        }
        guard let value = Int(trimmed), value >= 0 else { return nil }
        return value
    }
}
