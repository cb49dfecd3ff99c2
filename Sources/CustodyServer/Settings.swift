import CustodyModel
import CustodyConfig
import Foundation
import LedgerCore

/// The flags given on the command line; nil where a flag was not given, so that a
/// configuration file's value stands unless a flag overrides it.
struct FlagValues {
    var dataDir: String?
    var maxSessionsPerClient: Int?
    var maxSessionExpiryHours: Int?
    var ledgerMapSizeMib: Int?
    /// The ledger for years (issue 16): --checkpoint-every, --retention-days, --retention-max-live-bytes.
    var checkpointEvery: Int?
    var retentionDays: Int?
    var retentionMaxLiveBytes: String?
    var listen: [String] = []
    var connectTimeoutSeconds: Int?
    var logLevel: String?
    var passwordFile: String?
    var listenTLS: [String] = []
    var tlsCertificate: String?
    var tlsPrivateKey: String?
    var tlsClientCertificates: String?
    var tlsTrustedCertificates: [String] = []
    /// Operations (Operations.swift): --log-format, --metrics, --metrics-allow-remote, --event-subscriber.
    var logFormat: String?
    var metrics: String?
    var metricsAllowRemote = false
    var eventSubscribers: [String] = []
    /// MQTT over WebSocket and the keep-alive cap (issue 4): --listen-ws, --max-keep-alive-seconds.
    var listenWS: [String] = []
    var maxKeepAliveSeconds: Int?
    /// HTTP publish (issue 21): --listen-http.
    var listenHTTP: [String] = []
    /// Limits (issue 15): --max-outbound-inflight, --outbound-high-water-bytes, --slow-consumer-seconds.
    var maxOutboundInflight: Int?
    var outboundHighWaterBytes: Int?
    var slowConsumerSeconds: Int?
    var maxPacketBytes: Int?
    var maxFiltersPerSubscribe: Int?
    /// Authorization (issue 14): --acl-file.
    var aclFile: String?
    /// Broker limits (issue 15): --max-subscriptions-per-session, --max-retained-bytes,
    /// --max-retained-messages, --queue-max-messages, --queue-max-bytes, --queue-overflow.
    var maxSubscriptionsPerSession: Int?
    var maxRetainedBytes: Int?
    var maxRetainedMessages: Int?
    var queueMaxMessages: Int?
    var queueMaxBytes: Int?
    var queueOverflow: String?
    /// Front limits (issue 15): --max-topic-bytes, --max-topic-levels, --max-user-property-bytes,
    /// --max-property-value-bytes, --receive-maximum, --topic-alias-maximum,
    /// --connects-per-second-per-session, --publish-messages-per-second, --publish-bytes-per-second,
    /// --max-connections.
    var maxTopicBytes: Int?
    var maxTopicLevels: Int?
    var maxUserPropertyBytes: Int?
    var maxPropertyValueBytes: Int?
    var receiveMaximum: Int?
    var topicAliasMaximum: Int?
    var connectsPerSecondPerSession: Int?
    var publishMessagesPerSecond: Int?
    var publishBytesPerSecond: Int?
    var maxConnections: Int?
    /// The ledger as a service (issue 20): --ledger-socket.
    var ledgerSocket: String?
    /// A cluster on etcd (issue 18): --cluster-etcd, --node-id, --cluster-lease-seconds.
    var clusterEtcd: String?
    var nodeID: String?
    var clusterLeaseSeconds: Int?
    /// Messages across the nodes on NATS JetStream (issue 19): --cluster-nats, --cluster-nats-replicas, --cluster-nats-batch.
    var clusterNATS: String?
    var clusterNATSReplicas: Int?
    var clusterNATSBatch: Int?
}

/// What `custody` runs with: the configuration file (if any), then the flags over it.
enum Settings {
    /// A number flag of the NATS link: in `range`, and only with NATS configured.
    private static func natsNumber(_ value: Int?, _ flag: String, _ range: ClosedRange<Int>, _ configuration: CustodyConfiguration) throws -> Int? {
        guard let value else { return nil }
        guard range.contains(value) else {
            throw SettingsError("\(flag) must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
        }
        guard configuration.cluster?.nats.isEmpty == false else {
            throw SettingsError("\(flag) needs --cluster-nats (or cluster.nats in the configuration file)")
        }
        return value
    }

    /// `--cluster-etcd`, `--node-id` and `--cluster-lease-seconds` over the file's `cluster:`.
    static func resolveCluster(_ configuration: inout CustodyConfiguration, flags: FlagValues, flagsOnly: Bool) throws {
        if let text = flags.clusterEtcd {
            let urls = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard !urls.isEmpty, !urls.contains(where: \.isEmpty) else {
                throw SettingsError("--cluster-etcd needs etcd's client URLs, comma-separated (http://127.0.0.1:2379,...)")
            }
            for url in urls {
                if let problem = ClusterConfiguration.problem(url: url) { throw SettingsError("--cluster-etcd: \(problem)") }
            }
            var cluster = ClusterConfiguration(
                etcd: urls, nodeID: configuration.cluster?.nodeID ?? "",
                leaseSeconds: configuration.cluster?.leaseSeconds ?? ClusterConfiguration.defaultLeaseSeconds)
            cluster.nats = configuration.cluster?.nats ?? []
            cluster.natsReplicas = configuration.cluster?.natsReplicas ?? 1
            cluster.natsBatch = configuration.cluster?.natsBatch ?? ClusterConfiguration.defaultNATSBatch
            configuration.cluster = cluster
        }
        if let text = flags.clusterNATS {
            let urls = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard !urls.isEmpty, !urls.contains(where: \.isEmpty) else {
                throw SettingsError("--cluster-nats needs NATS server URLs, comma-separated (nats://127.0.0.1:4222,...)")
            }
            for url in urls {
                if let problem = ClusterConfiguration.problem(natsURL: url) { throw SettingsError("--cluster-nats: \(problem)") }
            }
            guard configuration.cluster != nil else {
                throw SettingsError("--cluster-nats needs --cluster-etcd (or cluster: in the configuration file): etcd decides who owns a session")
            }
            configuration.cluster?.nats = urls
        }
        if let replicas = try natsNumber(flags.clusterNATSReplicas, "--cluster-nats-replicas", ClusterConfiguration.natsReplicasRange, configuration) {
            configuration.cluster?.natsReplicas = replicas
        }
        if let batch = try natsNumber(flags.clusterNATSBatch, "--cluster-nats-batch", ClusterConfiguration.natsBatchRange, configuration) {
            configuration.cluster?.natsBatch = batch
        }
        if let nodeID = flags.nodeID {
            if let problem = ClusterConfiguration.problem(nodeID: nodeID) { throw SettingsError("--node-id: \(problem)") }
            configuration.cluster?.nodeID = nodeID
        }
        if let seconds = flags.clusterLeaseSeconds {
            guard ClusterConfiguration.leaseSecondsRange.contains(seconds) else {
                throw SettingsError("--cluster-lease-seconds must be between 2 and 3600, got \(seconds)")
            }
            configuration.cluster?.leaseSeconds = seconds
        }
        guard !flagsOnly else { return }
        if configuration.cluster == nil, flags.nodeID != nil || flags.clusterLeaseSeconds != nil {
            throw SettingsError("--node-id and --cluster-lease-seconds need --cluster-etcd (or cluster: in the configuration file)")
        }
        if let cluster = configuration.cluster, cluster.nodeID.isEmpty {
            throw SettingsError("--cluster-etcd needs --node-id NAME (this node's name in the cluster)")
        }
    }

    /// The value of an enumerated flag (`--log-level`, `--log-format`, ...), or an error that lists the choices.
    static func choice<Value: CaseIterable & RawRepresentable>(_ text: String, flag: String) throws -> Value
    where Value.RawValue == String {
        guard let value = Value(rawValue: text) else {
            throw SettingsError("\(flag) '\(text)' is not one of \(Value.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    /// `flagsOnly`: the flags are checked on their own (a file will come later), so what
    /// depends on the file's listeners is not judged yet.
    static func resolve(file: String?, flags: FlagValues, flagsOnly: Bool = false) throws -> CustodyConfiguration {
        var configuration = CustodyConfiguration()
        if let file { configuration = try CustodyConfiguration.load(file: file) }
        if let value = flags.dataDir { configuration.dataDir = value }
        if let value = flags.ledgerSocket {
            guard !value.isEmpty else { throw SettingsError("--ledger-socket needs a path") }
            configuration.ledgerSocket = value
        }
        try resolveCluster(&configuration, flags: flags, flagsOnly: flagsOnly)
        if let value = flags.maxSessionsPerClient {
            guard NamespacePolicy.sessionsPerClientRange.contains(value) else {
                throw SettingsError("--max-sessions-per-client must be between 1 and 100, got \(value)")
            }
            configuration.namespace.maximumClientSessionsPerAuthenticationName = value
        }
        if let value = flags.maxSessionExpiryHours {
            guard NamespacePolicy.expiryHoursRange.contains(value) else {
                throw SettingsError("--max-session-expiry-hours must be between 1 and 8, got \(value)")
            }
            configuration.namespace.maximumSessionExpiryInHours = value
        }
        if let value = flags.ledgerMapSizeMib {
            guard (1...(1 << 24)).contains(value) else {
                throw SettingsError("--ledger-map-size-mib must be between 1 and \(1 << 24), got \(value)")
            }
            configuration.ledgerMapSizeMiB = value
        }
        if let value = flags.checkpointEvery {
            guard LedgerConfiguration.checkpointEveryRange.contains(value) else {
                throw SettingsError("--checkpoint-every must be between 0 and \(LedgerConfiguration.checkpointEveryRange.upperBound), got \(value)")
            }
            configuration.ledger.checkpointEvery = value
        }
        if let value = flags.retentionDays {
            guard LedgerConfiguration.retentionDaysRange.contains(value) else {
                throw SettingsError("--retention-days must be between 0 and \(LedgerConfiguration.retentionDaysRange.upperBound), got \(value)")
            }
            configuration.ledger.retentionDays = value == 0 ? nil : value
        }
        if let text = flags.retentionMaxLiveBytes {
            guard let value = LedgerConfiguration.parseBytes(text), value == 0 || value >= 1 << 20 else {
                throw SettingsError("--retention-max-live-bytes must be 0 or a size of at least 1MiB (8GiB, 536870912), got \(text)")
            }
            configuration.ledger.maxLiveBytes = value == 0 ? nil : value
        }
        if !flags.listen.isEmpty {
            // The flag replaces the file's mqtt listeners; its mqtts and ws listeners stay.
            let others = configuration.listeners.filter { $0.kind != .mqtt }
            configuration.listeners = try flags.listen.map { text in
                guard let address = HostPort(parsing: text) else {
                    throw SettingsError("--listen '\(text)' is not HOST:PORT (IPv6 as [HOST]:PORT, port 0-65535)")
                }
                return ListenerConfiguration(kind: .mqtt, host: address.host, port: address.port)
            } + others
        }
        try applyTLSFlags(flags, to: &configuration, flagsOnly: flagsOnly)
        try replaceListeners(of: .http, with: flags.listenHTTP, flag: "--listen-http", in: &configuration)
        try replaceListeners(of: .ws, with: flags.listenWS, flag: "--listen-ws", in: &configuration)
        if let value = flags.maxKeepAliveSeconds {
            guard (1...65_535).contains(value) else {
                throw SettingsError("--max-keep-alive-seconds must be between 1 and 65535, got \(value)")
            }
            configuration.maxKeepAliveSeconds = value
        }
        for (value, flag, range, key) in [
            (flags.maxOutboundInflight, "--max-outbound-inflight", LimitsConfiguration.maxOutboundInflightRange,
             \LimitsConfiguration.maxOutboundInflight),
            (flags.outboundHighWaterBytes, "--outbound-high-water-bytes", LimitsConfiguration.outboundHighWaterBytesRange,
             \LimitsConfiguration.outboundHighWaterBytes),
            (flags.slowConsumerSeconds, "--slow-consumer-seconds", LimitsConfiguration.slowConsumerSecondsRange,
             \LimitsConfiguration.slowConsumerSeconds),
            (flags.maxPacketBytes, "--max-packet-bytes", LimitsConfiguration.maxPacketBytesRange,
             \LimitsConfiguration.maxPacketBytes),
            (flags.maxFiltersPerSubscribe, "--max-filters-per-subscribe", LimitsConfiguration.maxFiltersPerSubscribeRange,
             \LimitsConfiguration.maxFiltersPerSubscribe),
            (flags.maxSubscriptionsPerSession, "--max-subscriptions-per-session",
             LimitsConfiguration.maxSubscriptionsPerSessionRange, \LimitsConfiguration.maxSubscriptionsPerSession),
            (flags.maxRetainedBytes, "--max-retained-bytes", LimitsConfiguration.maxRetainedBytesRange,
             \LimitsConfiguration.maxRetainedBytes),
            (flags.maxRetainedMessages, "--max-retained-messages", LimitsConfiguration.maxRetainedMessagesRange,
             \LimitsConfiguration.maxRetainedMessages),
            (flags.queueMaxMessages, "--queue-max-messages", LimitsConfiguration.queueMaxMessagesRange,
             \LimitsConfiguration.queueMaxMessages),
            (flags.queueMaxBytes, "--queue-max-bytes", LimitsConfiguration.queueMaxBytesRange,
             \LimitsConfiguration.queueMaxBytes),
            (flags.maxTopicBytes, "--max-topic-bytes", LimitsConfiguration.maxTopicBytesRange,
             \LimitsConfiguration.maxTopicBytes),
            (flags.maxTopicLevels, "--max-topic-levels", LimitsConfiguration.maxTopicLevelsRange,
             \LimitsConfiguration.maxTopicLevels),
            (flags.maxUserPropertyBytes, "--max-user-property-bytes", LimitsConfiguration.maxUserPropertyBytesRange,
             \LimitsConfiguration.maxUserPropertyBytes),
            (flags.maxPropertyValueBytes, "--max-property-value-bytes", LimitsConfiguration.maxPropertyValueBytesRange,
             \LimitsConfiguration.maxPropertyValueBytes),
            (flags.receiveMaximum, "--receive-maximum", LimitsConfiguration.receiveMaximumRange,
             \LimitsConfiguration.receiveMaximum),
            (flags.topicAliasMaximum, "--topic-alias-maximum", LimitsConfiguration.topicAliasMaximumRange,
             \LimitsConfiguration.topicAliasMaximum),
            (flags.connectsPerSecondPerSession, "--connects-per-second-per-session",
             LimitsConfiguration.connectsPerSecondPerSessionRange, \LimitsConfiguration.connectsPerSecondPerSession),
            (flags.publishMessagesPerSecond, "--publish-messages-per-second",
             LimitsConfiguration.publishMessagesPerSecondRange, \LimitsConfiguration.publishMessagesPerSecond),
            (flags.publishBytesPerSecond, "--publish-bytes-per-second", LimitsConfiguration.publishBytesPerSecondRange,
             \LimitsConfiguration.publishBytesPerSecond),
        ] {
            guard let value else { continue }
            guard range.contains(value) else {
                throw SettingsError("\(flag) must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
            }
            configuration.limits[keyPath: key] = value
        }
        if let value = flags.queueOverflow {
            configuration.limits.queueOverflow = try choice(value, flag: "--queue-overflow")
        }
        if let value = flags.maxConnections {
            let range = LimitsConfiguration.maxConnectionsRange
            guard range.contains(value) else {
                throw SettingsError("--max-connections must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
            }
            configuration.limits.maxConnections = value
        }
        if let value = flags.connectTimeoutSeconds {
            guard (1...3600).contains(value) else {
                throw SettingsError("--connect-timeout-seconds must be between 1 and 3600, got \(value)")
            }
            configuration.connectTimeoutSeconds = value
        }
        if let value = flags.logLevel {
            configuration.logLevel = try choice(value, flag: "--log-level")
        }
        if let value = flags.passwordFile { configuration.passwordFile = value }
        if let value = flags.aclFile {
            guard configuration.authorization.permissionBindings.isEmpty else {
                throw SettingsError("--acl-file: not together with the configuration's permissionBindings")
            }
            configuration.authorization.aclFile = value
        }
        try applyOperationsFlags(flags, to: &configuration)
        return configuration
    }

    /// A flag's listeners (`HOST[:PORT]`, repeatable) in place of the file's of that kind; the
    /// others stay. No flag given: the file's stand.
    static func replaceListeners(
        of kind: ListenerConfiguration.Kind, with texts: [String], flag: String, in configuration: inout CustodyConfiguration
    ) throws {
        guard !texts.isEmpty else { return }
        let others = configuration.listeners.filter { $0.kind != kind }
        configuration.listeners = try others + texts.map { text in
            guard let address = HostPort(parsing: text, defaultPort: kind.defaultPort) else {
                throw SettingsError("\(flag) '\(text)' is not HOST[:PORT] (IPv6 as [HOST]:PORT, port 0-65535, default \(kind.defaultPort))")
            }
            return ListenerConfiguration(kind: kind, host: address.host, port: address.port)
        }
    }

    /// `--listen-tls` replaces the file's mqtts listeners; `--tls-*` set every mqtts listener's
    /// certificate, key, client certificate mode and trusted CAs.
    static func applyTLSFlags(
        _ flags: FlagValues, to configuration: inout CustodyConfiguration, flagsOnly: Bool = false
    ) throws {
        if !flags.listenTLS.isEmpty {
            let tlsTemplate = configuration.listeners.first { $0.kind == .mqtts }
            let tls = try flags.listenTLS.map { text in
                guard let address = HostPort(parsing: text, defaultPort: ListenerConfiguration.Kind.mqtts.defaultPort) else {
                    throw SettingsError("--listen-tls '\(text)' is not HOST[:PORT] (IPv6 as [HOST]:PORT, port 0-65535, default 8883)")
                }
                var listener = ListenerConfiguration(kind: .mqtts, host: address.host, port: address.port)
                if let tlsTemplate {
                    listener.certificate = tlsTemplate.certificate
                    listener.privateKey = tlsTemplate.privateKey
                    listener.clientCertificates = tlsTemplate.clientCertificates
                    listener.trustedCertificates = tlsTemplate.trustedCertificates
                }
                return listener
            }
            let mqtt = configuration.listeners.filter { $0.kind == .mqtt }
            let others = configuration.listeners.filter { $0.kind != .mqtt && $0.kind != .mqtts }
            configuration.listeners = mqtt + tls + others
        }
        var mode: ListenerConfiguration.ClientCertificates?
        if let value = flags.tlsClientCertificates {
            mode = try choice(value, flag: "--tls-client-certificates") as ListenerConfiguration.ClientCertificates
        }
        let given = flags.tlsCertificate != nil || flags.tlsPrivateKey != nil || mode != nil || !flags.tlsTrustedCertificates.isEmpty
        let indices = configuration.listeners.indices.filter { configuration.listeners[$0].kind == .mqtts }
        if given && indices.isEmpty && !flagsOnly {
            throw SettingsError("--tls-* flags need an mqtts listener (--listen-tls HOST:PORT, or one in the configuration file)")
        }
        for index in indices {
            if let value = flags.tlsCertificate { configuration.listeners[index].certificate = value }
            if let value = flags.tlsPrivateKey { configuration.listeners[index].privateKey = value }
            if let mode { configuration.listeners[index].clientCertificates = mode }
            if !flags.tlsTrustedCertificates.isEmpty {
                configuration.listeners[index].trustedCertificates = flags.tlsTrustedCertificates
            }
            let listener = configuration.listeners[index]
            if (listener.certificate == nil || listener.privateKey == nil) && !flagsOnly {
                throw SettingsError("mqtts listener \(listener.address) needs --tls-certificate and --tls-private-key (PEM files)")
            }
        }
    }

    /// The one-paragraph summary `--check-config` prints for a valid file.
    static func summary(of configuration: CustodyConfiguration, file: String) -> String {
        let listeners = configuration.listeners.map { "\($0.kind.rawValue) \($0.address)" }.joined(separator: ", ")
        let namespace = configuration.namespace
        var lines = [
            "custody: \(file) is valid",
            "  dataDir \(configuration.dataDir)",
            "  listeners \(listeners)",
            "  namespace maximumClientSessionsPerAuthenticationName=\(namespace.maximumClientSessionsPerAuthenticationName) maximumSessionExpiryInHours=\(namespace.maximumSessionExpiryInHours) registeredClientsOnly=\(namespace.registeredClientsOnly)",
            "  clients \(configuration.clients.count) (\(configuration.clients.filter { $0.state == .disabled }.count) disabled)",
        ]
        if !namespace.alternativeAuthenticationNameSources.isEmpty {
            lines.append("  alternativeAuthenticationNameSources \(namespace.alternativeAuthenticationNameSources.map(\.rawValue).joined(separator: ", "))")
        }
        if let passwordFile = configuration.passwordFile { lines.append("  passwordFile \(passwordFile)") }
        if let socket = configuration.ledgerSocket { lines.append("  ledgerSocket \(socket)") }
        let authorization = configuration.authorization
        if let acl = authorization.aclFile {
            lines.append("  authorization \(authorization.effectiveMode.rawValue) aclFile \(acl)")
        } else {
            lines.append("  authorization \(authorization.effectiveMode.rawValue) clientGroups=\(authorization.clientGroups.count) topicSpaces=\(authorization.topicSpaces.count) permissionBindings=\(authorization.permissionBindings.count)")
        }
        lines.append("  logLevel \(configuration.logLevel.rawValue) logFormat \(configuration.logFormat.rawValue)")
        if let metrics = configuration.metrics {
            lines.append("  metrics \(metrics)\(configuration.metricsAllowRemote ? " (remote allowed)" : "")")
        }
        for route in configuration.routes {
            lines.append("  route \(route.name) -> \(route.endpoint.absoluteString) mode=\(route.mode.rawValue) topicFilters=\(route.topicFilters.joined(separator: ",")) lifecycleEvents=\(route.lifecycleEvents)")
        }
        if !configuration.eventSubscribers.isEmpty {
            lines.append("  eventSubscribers \(configuration.eventSubscribers.map(\.value).joined(separator: ", "))")
        }
        return lines.joined(separator: "\n")
    }
}

struct SettingsError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension CustodyConfiguration {
    /// What this build of `custody` cannot honour yet: refused at startup rather than ignored.
    /// Not inlined: inlined into `Custody.run()` it made the release compiler (Swift 6.3.1, -O)
    /// crash splitting run()'s coroutine (signal 11 in CoroSplit, since d306077).
    @inline(never) func validateForStart() throws {
        // TLS files and the password file are read now: a bad one is named before anything starts.
        _ = try frontListeners()
        for listener in listeners where listener.kind == .https { _ = try Self.httpsSetup(listener) }
        _ = try authenticator()
    }
}
