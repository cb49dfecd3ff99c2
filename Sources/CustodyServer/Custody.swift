import CustodyModel
import ArgumentParser
import Broker
import ClusterMessaging
import ClusterOwnership
import CustodyConfig
import Foundation
import LedgerService
import LedgerWire
import Logging
import MQTTFront
import NIOCore
import Routing
import ServiceLifecycle
import HTTPPublish
import LMDBStorage
import SessionLedger

@main
struct Custody: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custody",
        abstract: "A durable MQTT broker whose session ownership lives in an event-sourced LMDB ledger.",
        discussion: """
            Opens (or creates) the session ledger in --data-dir, recovers it (sessions left \
            connected by a crash are recorded as disconnected by the restart; sessions whose \
            expiry passed meanwhile are expired), listens for MQTT 3.1.1 and 5.0 clients on every \
            --listen address and keeps expiring sessions as their deadlines pass, until SIGINT or \
            SIGTERM. Every CONNECT is decided by the ledger and answered once the decision is on disk.
            """,
        version: CustodyVersion.string)

    @Option(
        help: ArgumentHelp(
            "YAML configuration file (see Tools/custody.example.yaml); flags given as well override its values.",
            valueName: "file"))
    var config: String?

    @Option(
        help: ArgumentHelp(
            "Validate a configuration file, print what it sets and exit (0: valid; 1: the first problem, with its line and key).",
            valueName: "file"))
    var checkConfig: String?

    @Option(help: "Directory of the LMDB session ledger (default ./data; config key dataDir).")
    var dataDir: String?

    @Option(help: "Live sessions (connected or not yet expired) one authentication name may hold, 1-100 (default 10; config key namespace.maximumClientSessionsPerAuthenticationName).")
    var maxSessionsPerClient: Int?

    @Option(help: "Longest session expiry a client may ask for, in hours, 1-8 (default 1; config key namespace.maximumSessionExpiryInHours).")
    var maxSessionExpiryHours: Int?

    @Option(help: "Most the ledger's map may grow to, in MiB; it starts small and grows, and CONNECTs are refused (0x88) once only its reserve is left (default 65536; config key ledgerMapSizeMiB).")
    var ledgerMapSizeMib: Int?

    @Option(help: "A checkpoint record every N ledger records; recovery checks the log from the newest (default 100000, 0: none; config ledger.checkpointEvery).")
    var checkpointEvery: Int?

    @Option(help: "Archive ledger events older than D days (0: no age limit; default 30; config ledger.retention.days).")
    var retentionDays: Int?

    @Option(help: "Archive the oldest ledger events while the live log holds more than this (8GiB, 512MiB, bytes; 0: no size limit; default 8GiB; config ledger.retention.maxLiveBytes).")
    var retentionMaxLiveBytes: String?

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "MQTT listener as HOST:PORT (IPv6 as [HOST]:PORT; port 0 picks a free port). Repeatable; replaces the configured mqtt listeners; default 127.0.0.1:1883.",
            valueName: "host:port"))
    var listen: [String] = []

    @Option(help: "Seconds a new connection may take to send its CONNECT, 1-3600 (default 10; config key connectTimeoutSeconds).")
    var connectTimeoutSeconds: Int?

    @Option(help: "Least severe log level written to standard error: trace, debug, info, notice, warning, error, critical (default info; config key logLevel).")
    var logLevel: String?

    @Option(help: "Mosquitto-style password file (mosquitto_passwd); when given, every CONNECT needs a username and password from it (config key passwordFile).")
    var passwordFile: String?

    @Option(
        name: .customLong("listen-tls"),
        help: ArgumentHelp(
            "MQTT over TLS listener as HOST[:PORT] (default port 8883). Repeatable; replaces the configured mqtts listeners (config: listeners with protocol mqtts).",
            valueName: "host:port"))
    var listenTLS: [String] = []

    @Option(
        name: .customLong("listen-ws"),
        help: ArgumentHelp(
            "MQTT over WebSocket listener as HOST[:PORT] (default port 8080), path /mqtt, subprotocol mqtt. Repeatable; replaces the configured ws listeners (config: listeners with protocol ws).",
            valueName: "host:port"))
    var listenWS: [String] = []

    @Option(
        name: .customLong("listen-http"),
        help: ArgumentHelp(
            "HTTP publish listener (POST /mqtt/messages?topic=T) as HOST[:PORT] (default port 8088). Repeatable; replaces the configured http listeners (config: listeners with protocol http or https).",
            valueName: "host:port"))
    var listenHTTP: [String] = []

    @Option(help: "Longest keep-alive a client may use, 1-65535 s; v5 clients asking more (or 0) get this one as Server Keep Alive, v3.1.1 clients asking more are refused (default: the client's; config key maxKeepAliveSeconds).")
    var maxKeepAliveSeconds: Int?

    @Option(help: "Most QoS 1/2 messages in flight to one client, 1-65535 (the smaller of this and its Receive Maximum; default 100; config key limits.maxOutboundInflight).")
    var maxOutboundInflight: Int?

    @Option(help: "Bytes waiting to be written to one client above which QoS 0 messages to it are dropped, 16384-1073741824 (default 1048576; config key limits.outboundHighWaterBytes).")
    var outboundHighWaterBytes: Int?

    @Option(help: "Seconds a client may stay above the outbound high-water mark before it is disconnected (v5 0x97), 1-86400 (default 60; config key limits.slowConsumerSeconds).")
    var slowConsumerSeconds: Int?

    @Option(help: "Largest packet a client may send, announced as Maximum Packet Size; larger ones close the connection (v5 0x95), 1024-268435460 (default 524288; config key limits.maxPacketBytes).")
    var maxPacketBytes: Int?

    @Option(help: "Filters one SUBSCRIBE may carry; those past it get SUBACK 0x97 (3.1.1: 0x80), 1-65535 (default 10; config key limits.maxFiltersPerSubscribe).")
    var maxFiltersPerSubscribe: Int?

    @Option(help: "Topic filters one session may hold; a new one past it gets SUBACK 0x97 (3.1.1: 0x80), 1-100000 (default 50; config key limits.maxSubscriptionsPerSession).")
    var maxSubscriptionsPerSession: Int?

    @Option(help: "Largest retained payload in bytes; a larger retained message is not retained (v5 QoS 1/2: PUBACK/PUBREC 0x97 and not delivered), 1-268435455 (default 65536; config key limits.maxRetainedBytes).")
    var maxRetainedBytes: Int?

    @Option(help: "Most topics with a retained message; a retained message for a new topic past it is not retained (v5 QoS 1/2: 0x97), 1-100000000 (default 100000; config key limits.maxRetainedMessages).")
    var maxRetainedMessages: Int?

    @Option(help: "Most messages one session's queue holds (offline, or behind its in-flight window), 1-100000000 (default 1000; config key limits.queueMaxMessages).")
    var queueMaxMessages: Int?

    @Option(help: "Most payload bytes one session's queue holds, 1024-1099511627776 (default 16777216; config key limits.queueMaxBytes).")
    var queueMaxBytes: Int?

    @Option(help: "What a full session queue does: dropOldest (the oldest queued messages go) or endSession (the session ends: ledger expired(sessionOverflow), v5 DISCONNECT 0x97) (default dropOldest; config key limits.queueOverflow).")
    var queueOverflow: String?

    @Option(help: "Longest topic name of a PUBLISH or a will, in bytes, 1-65535; longer: v5 PUBACK/PUBREC 0x90 (QoS 0: DISCONNECT 0x90), 3.1.1 closed (default 256; config key limits.maxTopicBytes).")
    var maxTopicBytes: Int?

    @Option(help: "Most levels of a topic name of a PUBLISH or a will, 1-32768; refused as --max-topic-bytes (default 15; config key limits.maxTopicLevels).")
    var maxTopicLevels: Int?

    @Option(help: "Most bytes of User Properties (names and values) in one packet, 0-268435455; more closes the connection (v5 0x95) (default 32768; config key limits.maxUserPropertyBytes).")
    var maxUserPropertyBytes: Int?

    @Option(help: "Longest Response Topic, Correlation Data or Content Type, 1-65535 bytes; longer closes the connection (v5 0x95) (default 256; config key limits.maxPropertyValueBytes).")
    var maxPropertyValueBytes: Int?

    @Option(help: "Receive Maximum announced to v5 clients: QoS 1/2 PUBLISHes a client may have unacknowledged, 1-65535; one more closes its connection (0x93) (default 100; config key limits.receiveMaximum).")
    var receiveMaximum: Int?

    @Option(help: "Topic Alias Maximum announced to v5 clients, 0-65535 (0: no aliases; above: 0x94); also the most aliases the server uses towards a client (default 10; config key limits.topicAliasMaximum).")
    var topicAliasMaximum: Int?

    @Option(help: "CONNECTs a second per session name, 0-1000 (0: no limit); more get CONNACK 0x9F (3.1.1: 3) (default 1; config key limits.connectsPerSecondPerSession).")
    var connectsPerSecondPerSession: Int?

    @Option(help: "PUBLISH messages a second one connection may send, 0-1000000 (0: no limit); above, its socket is not read until its budget refills (default 0; config key limits.publishMessagesPerSecond).")
    var publishMessagesPerSecond: Int?

    @Option(help: "PUBLISH bytes (topic and payload) a second one connection may send, 0-1073741824 (0: no limit); throttled as --publish-messages-per-second (default 0; config key limits.publishBytesPerSecond).")
    var publishBytesPerSecond: Int?

    @Option(help: "Connections open at once, every listener together, 1-10000000; one more is closed as soon as it is accepted (default: the descriptor limit less a reserve; config key limits.maxConnections).")
    var maxConnections: Int?

    @Option(help: ArgumentHelp("Server certificate chain of the mqtts listeners, PEM (config key listeners[].certificate).", valueName: "file"))
    var tlsCertificate: String?

    @Option(help: ArgumentHelp("Private key of that certificate, PEM (config key listeners[].privateKey).", valueName: "file"))
    var tlsPrivateKey: String?

    @Option(help: ArgumentHelp(
        "Client certificates on the mqtts listeners: none, optional or required (default none; config key listeners[].clientCertificates).",
        valueName: "mode"))
    var tlsClientCertificates: String?

    @Option(
        name: .customLong("tls-trusted-certificate"),
        help: ArgumentHelp(
            "CA certificate (PEM) client certificates must chain to. Repeatable; without any, self-signed client certificates are accepted and matched by thumbprint (config key listeners[].trustedCertificates).",
            valueName: "file"))
    var tlsTrustedCertificates: [String] = []

    @Option(help: "Log lines as text or json (JSON lines: time, level, label, message, metadata); default text (config key logFormat).")
    var logFormat: String?

    @Option(help: ArgumentHelp(
        "Serve Prometheus metrics at http://HOST:PORT/metrics (off by default; loopback only unless --metrics-allow-remote; config key metrics).",
        valueName: "host:port"))
    var metrics: String?

    @Flag(help: "Allow --metrics on a non-loopback address (config key metricsAllowRemote).")
    var metricsAllowRemote = false

    @Option(
        name: .customLong("event-subscriber"),
        help: ArgumentHelp(
            "Authentication name that may subscribe to lifecycle events ($custody/events/...). Repeatable; replaces the config key eventSubscribers.",
            valueName: "name"))
    var eventSubscribers: [String] = []

    @Option(help: ArgumentHelp(
        "Serve the session ledger on this Unix domain socket (mode 0660) for other fronts, such as Mosquitto with the custody plugin (config key ledgerSocket).",
        valueName: "path"))
    var ledgerSocket: String?

    @OptionGroup(title: "Authorization")
    var access: AccessOptions

    @Option(
        name: .customLong("cluster-etcd"),
        help: ArgumentHelp(
            "Run as a node of a cluster whose session ownership etcd decides: etcd's client URLs, comma-separated (config key cluster.etcd; needs --node-id).",
            valueName: "url[,url...]"))
    var clusterEtcd: String?

    @Option(
        name: .customLong("node-id"),
        help: ArgumentHelp("This node's name in the cluster, unique among its live nodes (config key cluster.nodeId).", valueName: "name"))
    var nodeID: String?

    @Option(
        name: .customLong("cluster-lease-seconds"),
        help: ArgumentHelp(
            "How long the node's lease in etcd lives without a keepalive, 2-3600 (default 10; config key cluster.leaseSeconds).",
            valueName: "seconds"))
    var clusterLeaseSeconds: Int?

    @Option(
        name: .customLong("cluster-nats"),
        help: ArgumentHelp(
            "Carry messages between the cluster's nodes on NATS JetStream: NATS server URLs, comma-separated (config key cluster.nats; needs --cluster-etcd).",
            valueName: "url[,url...]"))
    var clusterNATS: String?

    @Option(
        name: .customLong("cluster-nats-replicas"),
        help: ArgumentHelp(
            "Replicas of the JetStream stream that keeps the messages, 1-5 (default 1; 3 on a NATS cluster of three; config key cluster.natsReplicas).",
            valueName: "n"))
    var clusterNATSReplicas: Int?

    @Option(
        name: .customLong("cluster-nats-batch"),
        help: ArgumentHelp(
            "At most this many QoS 1/2 messages of one topic stored in one JetStream message, 1-1024 (default 256; 1: each alone, readable by nodes older than the batching, for a rolling upgrade; config key cluster.natsBatch).",
            valueName: "n"))
    var clusterNATSBatch: Int?

    var flags: FlagValues {
        var flags = FlagValues(
            dataDir: dataDir, maxSessionsPerClient: maxSessionsPerClient, maxSessionExpiryHours: maxSessionExpiryHours,
            ledgerMapSizeMib: ledgerMapSizeMib, checkpointEvery: checkpointEvery, retentionDays: retentionDays,
            retentionMaxLiveBytes: retentionMaxLiveBytes, listen: listen, connectTimeoutSeconds: connectTimeoutSeconds,
            logLevel: logLevel, passwordFile: passwordFile, listenTLS: listenTLS, tlsCertificate: tlsCertificate,
            tlsPrivateKey: tlsPrivateKey, tlsClientCertificates: tlsClientCertificates,
            tlsTrustedCertificates: tlsTrustedCertificates, logFormat: logFormat, metrics: metrics,
            metricsAllowRemote: metricsAllowRemote, eventSubscribers: eventSubscribers, listenWS: listenWS,
            maxKeepAliveSeconds: maxKeepAliveSeconds, maxOutboundInflight: maxOutboundInflight,
            outboundHighWaterBytes: outboundHighWaterBytes, slowConsumerSeconds: slowConsumerSeconds,
            maxPacketBytes: maxPacketBytes, maxFiltersPerSubscribe: maxFiltersPerSubscribe,
            maxSubscriptionsPerSession: maxSubscriptionsPerSession,
            maxRetainedBytes: maxRetainedBytes, maxRetainedMessages: maxRetainedMessages,
            queueMaxMessages: queueMaxMessages, queueMaxBytes: queueMaxBytes, queueOverflow: queueOverflow,
            maxTopicBytes: maxTopicBytes, maxTopicLevels: maxTopicLevels,
            maxUserPropertyBytes: maxUserPropertyBytes, maxPropertyValueBytes: maxPropertyValueBytes,
            receiveMaximum: receiveMaximum, topicAliasMaximum: topicAliasMaximum,
            connectsPerSecondPerSession: connectsPerSecondPerSession,
            publishMessagesPerSecond: publishMessagesPerSecond, publishBytesPerSecond: publishBytesPerSecond,
            maxConnections: maxConnections)
        flags.aclFile = access.aclFile
        flags.ledgerSocket = ledgerSocket
        flags.listenHTTP = listenHTTP
        flags.clusterEtcd = clusterEtcd
        flags.nodeID = nodeID
        flags.clusterLeaseSeconds = clusterLeaseSeconds
        flags.clusterNATS = clusterNATS
        flags.clusterNATSReplicas = clusterNATSReplicas
        flags.clusterNATSBatch = clusterNATSBatch
        return flags
    }

    /// Bad flag values are usage errors (exit 64), named before anything else happens.
    func validate() throws {
        try access.validate(checkConfig: checkConfig)
        do {
            _ = try Settings.resolve(file: nil, flags: flags, flagsOnly: config != nil || checkConfig != nil)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The settings in force, or exit 1 with the problem (file, line and key, or the flag).
    func settings() throws -> CustodyConfiguration {
        do {
            return try Settings.resolve(file: config, flags: flags)
        } catch {
            FileHandle.standardError.write(Data("custody: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    func run() async throws {
        // Before anything else: a supervisor that started us with these blocked would never
        // be able to stop us (Foundation's Process does that to its children).
        unblockTerminationSignals()
        if let checkConfig {
            do {
                let configuration = try Settings.resolve(file: checkConfig, flags: flags)
                try configuration.validateForStart()
                try configuration.validateMetrics()
                guard access.client == nil else {
                    if try explainAccess(configuration, options: access) { return }
                    throw ExitCode.failure
                }
                _ = try configuration.accessRules()
                // The issuers' key files are read as at start (a private key, a JWKS that is not one).
                if !configuration.authentication.isEmpty {
                    _ = try await configuration.identityAuthority(logger: Logger(label: "custody.auth"))
                }
                say(Settings.summary(of: configuration, file: checkConfig))
                return
            } catch let exit as ExitCode {
                throw exit
            } catch {
                FileHandle.standardError.write(Data("custody: \(error)\n".utf8))
                throw ExitCode.failure
            }
        }
        let settings = try settings()
        do {
            try settings.validateForStart()
            try settings.validateMetrics()
        } catch {
            FileHandle.standardError.write(Data("custody: \(error)\n".utf8))
            throw ExitCode.failure
        }
        bootstrapLogging(format: settings.logFormat, level: settings.logLevel)
        say("custody: version \(CustodyVersion.string)")
        let operations = Operations(settings: settings, logger: Logger(label: "custody.ledger"))
        let dataDir = settings.dataDir
        let policy = try settings.policy()
        let lmdbLedger: LMDBSessionLedger
        do {
            lmdbLedger = try LMDBSessionLedger(
                directory: dataDir, policy: policy, mapSize: settings.ledgerMapSizeMiB << 20,
                onCommit: operations.onCommit, onCommitFailure: operations.onCommitFailure,
                onEvents: operations.onEvents, countSessions: true,
                checkpointEvery: UInt64(settings.ledger.checkpointEvery),
                archive: settings.ledger.archivePolicy)
        } catch {
            FileHandle.standardError.write(Data("custody: cannot open the ledger in \(dataDir): \(error)\n".utf8))
            throw ExitCode.failure
        }
        // Without cluster settings the embedded ledger alone decides; with them, etcd does and
        // the embedded ledger records each decision with its epoch.
        let cluster = try await joinCluster(settings.cluster, ledger: lmdbLedger)
        let ledger: any SessionAuthority = cluster ?? lmdbLedger
        let recovery = ledger.recovery
        say("custody: ledger \(dataDir) head=\(recovery.head.sequence) hash=\(recovery.head.hash)")
        say("custody: recovered sessions disconnected_by_restart=\(recovery.disconnected.count) expired_while_down=\(recovery.expired.count) checked_from=\(recovery.checkedFrom) checked_records=\(recovery.checkedRecords)")
        if let figures = try? lmdbLedger.storageFigures() {
            say("custody: ledger storage live_bytes=\(figures.liveBytes) map_used_ratio=\(String(format: "%.3f", figures.mapUsedRatio)) in_reserve=\(figures.inReserve ? 1 : 0) archive=\(lmdbLedger.archiveDirectory) archive_segments=\(figures.archiveSegments) archive_bytes=\(figures.archiveBytes) retention_days=\(settings.ledger.retentionDays.map(String.init) ?? "none") retention_max_live_bytes=\(settings.ledger.maxLiveBytes.map(String.init) ?? "none")")
        }
        if let usage = lmdbLedger.mapUsage, usage.isAboveConfiguredMaximum {
            say("custody: warning: the ledger holds \(usage.usedBytes >> 20) MiB, more than --ledger-map-size-mib \(usage.configuredMaximumBytes >> 20) leaves room for (a reserve of \(usage.reserveBytes >> 20) MiB); its map may grow to \(usage.maximumBytes >> 20) MiB so that recovery, disconnects and expiries are recorded, and CONNECTs are refused until archiving (or a larger maximum) makes room")
        }
        say("custody: policy max_sessions_per_client=\(policy.maximumClientSessionsPerAuthenticationName) max_session_expiry_hours=\(policy.maximumSessionExpiryInHours)")
        let signals = terminationSignals()
        let hangups = hangupSignals()
        let brokerDirectory = (dataDir as NSString).appendingPathComponent("broker")
        let broker: Broker
        let limitReporter = BrokerLimitReporter(metrics: operations.frontMetrics, logger: Logger(label: "custody.broker"))
        do {
            // On a cluster carrying messages, the wills of sessions connected here when this
            // node died are sent by whichever node ended those connections: this one (at its
            // start, just now) or a survivor, never both.
            let wills: StoredWills =
                if let cluster, !(settings.cluster?.nats.isEmpty ?? true) { .publishOnlyFor(cluster.sessionsEndedAtStart) } else { .publish }
            broker = try Broker(directory: brokerDirectory, limits: settings.brokerLimits, observer: limitReporter, wills: wills)
            // Sessions the ledger no longer holds (expired while down) lose their queues too.
            try await broker.retainOnly(live: try ledger.liveSessionNames())
        } catch {
            throw await startFailed("cannot open the broker store in \(brokerDirectory): \(error)", ledger: ledger)
        }
        say("custody: broker \(brokerDirectory) sessions=\(broker.sessionNames.count)")
        if let counts = ledger.sessionCounts {
            say("custody: sessions live=\(counts.live) connected=\(counts.connected) disconnected=\(counts.disconnected)")
        }
        // Routes: before the ledger's recovery events are handed on, so that they are routed too.
        var router: Router?
        let routeAttributes = RouteAttributes()
        if !settings.routes.isEmpty {
            do {
                let made = try Router(
                    routes: settings.routes, broker: broker, source: settings.routingSource,
                    logger: Logger(label: "custody.routes"),
                    clientAttributes: { routeAttributes.attributes(authenticationName: $0, sessionName: $1, signIn: $2) })
                broker.setPublishTap(made)
                // Always: a reload may add a route that takes them.
                operations.lifecycleRouting.set { made.lifecycle($0) }
                router = made
                let missed = try made.replayLifecycle(from: lmdbLedger, recovery: recovery)
                if missed > 0 { say("custody: routes: \(missed) ledger events read again (committed after the routes' last write)") }
            } catch {
                throw await startFailed("cannot read the routes' outboxes in \(brokerDirectory): \(error)", broker: broker, ledger: ledger)
            }
        }
        // Messages across nodes: before the front takes clients, so that none is missed.
        let messaging: NATSClusterLink?
        do {
            messaging = try await joinMessaging(settings.cluster, broker: broker)
        } catch {
            ledger.close()
            // Its HTTP clients must be shut down before they go.
            await cluster?.gateway.shutdown()
            throw error
        }
        if let messaging, let cluster { messaging.followSessions(of: cluster) }
        operations.attach(ledger: ledger, broker: broker)
        let logger = Logger(label: "custody.mqtt")
        let listeners: [FrontListener]
        let authority: (any IdentityAuthority)?
        let accessRules: AccessRules
        do {
            listeners = try settings.frontListeners()
            authority = settings.needsAuthority(configFile: config)
                ? try await settings.identityAuthority(logger: Logger(label: "custody.auth")) : nil
            accessRules = try settings.accessRules()
            routeAttributes.replace(accessRules)
        } catch {
            throw await startFailed("\(error)", broker: broker, ledger: ledger)
        }
        // The ledger as a service: the same ledger (group commit, events, audit) as the listeners.
        let ledgerSocket = settings.ledgerSocket.map { path in
            LedgerSocketServer(
                path: path, ledger: ledger, authority: authority, access: accessRules,
                logger: Logger(label: "custody.ledger-socket"))
        }
        var takenOverElsewhere: (@Sendable (ConnectionNumber, SessionName) -> Void)?
        if let ledgerSocket {
            takenOverElsewhere = { connection, session in ledgerSocket.takenOverElsewhere(connection, session: session) }
        }
        let frontConfiguration = settings.frontConfiguration(
            listeners: listeners,
            operations: FrontOperations(
                metrics: operations.frontMetrics, serverTopicReaders: settings.eventSubscribers,
                takenOverElsewhere: takenOverElsewhere))
        let front = MQTTFront(
            ledger: ledger, pubsub: broker, configuration: frontConfiguration, logger: logger, authority: authority,
            access: accessRules)
        limitReporter.attach(front)
        cluster?.onConnectionEnded(takenOver: { front.takeOver($0) }, lapsed: { front.serverUnavailable($0) })
        let addresses: [HostPort]
        do {
            addresses = try await front.start()
        } catch {
            throw await startFailed("\(error)", front: front, broker: broker, ledger: ledger)
        }
        for (listener, address) in zip(listeners, addresses) {
            say("custody: listening \(FrontListener(address: address, transport: listener.transport))")
        }
        if let ledgerSocket {
            ledgerSocket.onTakeoverElsewhere { front.takeOver($0) }
            do {
                try await ledgerSocket.start()
            } catch {
                throw await startFailed("\(error)", front: front, broker: broker, ledger: ledger)
            }
            say("custody: ledger socket \(ledgerSocket.path) mode 0660 protocol \(LedgerWire.version)")
        }
        // HTTP publish: the same identities, rules and broker as the MQTT listeners.
        var httpGateway: HTTPPublishGateway?
        var httpServers: [HTTPPublishServer] = []
        if settings.listeners.contains(where: \.kind.isHTTPPublish) {
            let gateway = HTTPPublishGateway(
                rules: HTTPPublishGateway.Rules(
                    authority: authority, access: accessRules,
                    messagesPerSecond: settings.limits.publishMessagesPerSecond),
                broker: broker, logger: Logger(label: "custody.http"))
            do {
                httpServers = try settings.httpPublishServers(gateway: gateway, logger: Logger(label: "custody.http"))
            } catch {
                throw await startFailed("\(error)", front: front, broker: broker, ledger: ledger)
            }
            httpGateway = gateway
        }
        if let router { for line in settings.routeLines(router) { say(line) } }
        say(limitsLine(settings.limits, front: frontConfiguration))
        if authority != nil {
            say("custody: identity clients=\(settings.clients.count) registered_clients_only=\(settings.namespace.registeredClientsOnly) password_file=\(settings.passwordFile != nil ? 1 : 0); SIGHUP reloads the registry")
            if let line = settings.signInLine() { say(line) }
        }
        for line in settings.accessLines(accessRules) { say(line) }
        if let address = settings.metrics {
            do {
                let port = try await operations.startMetrics(at: address, ledger: ledger, storage: lmdbLedger, broker: broker) ?? address.port
                say("custody: metrics http://\(HostPort(host: address.host, port: port))/metrics")
            } catch {
                throw await startFailed("cannot serve metrics on \(address): \(error)", front: front, broker: broker, ledger: ledger)
            }
        }
        if !settings.eventSubscribers.isEmpty {
            say("custody: lifecycle events on $custody/events/clients/+/sessions/+ for \(settings.eventSubscribers.map(\.value).joined(separator: ", "))")
        }
        let reload = IdentityReload(
            configFile: config, flags: flags, front: front, broker: broker, frontOperations: frontConfiguration.operations,
            ledgerSocket: ledgerSocket, httpGateway: httpGateway, router: router, routeAttributes: routeAttributes,
            logger: logger)
        say("custody: running; SIGINT or SIGTERM stops")
        let closed = ShutdownTally()
        // The service group's own chatter (debug) is not for operators.
        var lifecycleLogger = Logger(label: "custody.lifecycle")
        lifecycleLogger.logLevel = max(lifecycleLogger.logLevel, .notice)
        // Shut down in reverse order: the front first, the stores last.
        let serviceGroup = custodyServices([
            StorageService(ledger: ledger, broker: broker, operations: operations, closed: closed),
        ] + (messaging.map { [ClusterMessagingService(link: $0)] } ?? [])
            + (router.map { [RoutesService(router: $0)] } ?? []) + [
            MetricsService(operations: operations),
            ExpiryService(ledger: ledger, front: front),
            LedgerStorageService(ledger: lmdbLedger, metrics: operations.ledgerMetrics, logger: Logger(label: "custody.ledger")),
            IdentityReloadService(reload: reload, hangups: hangups),
            MQTTFrontService(front: front, closed: closed),
        ] + (ledgerSocket.map { [LedgerSocketService(server: $0, closed: closed)] } ?? [])
            + httpServers.map { $0.application as any Service }, logger: lifecycleLogger)
        // Our own signal sources (not ServiceGroup's, which would share the signals with them)
        // start the graceful shutdown; the second signal is handled in `terminationSignals`.
        let announced = Task {
            for await name in signals {
                say("custody: \(name) received, closing connections and the ledger")
                await serviceGroup.triggerGracefulShutdown()
                break
            }
        }
        try await serviceGroup.run()
        announced.cancel()
    }
}

/// Start-up failed once some parts were open: says why on standard error, closes them (the
/// front first, the stores last) and returns the exit status to throw.
func startFailed(
    _ message: String, front: MQTTFront? = nil, broker: Broker? = nil, ledger: (any SessionAuthority)? = nil
) async -> ExitCode {
    FileHandle.standardError.write(Data("custody: \(message)\n".utf8))
    _ = await front?.shutdown()
    broker?.close()
    ledger?.close()
    // A cluster node's HTTP clients to etcd must be shut down before they go.
    if let cluster = ledger as? ClusterSessionAuthority { await cluster.gateway.shutdown() }
    return ExitCode.failure
}

/// One line to standard output, unbuffered: operators and supervisors read it as it happens.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

extension LedgerConfiguration {
    /// What the archiver does with this configuration; nil: nothing is ever archived.
    var archivePolicy: LedgerArchiver.Policy? {
        archives ? LedgerArchiver.Policy(retention: retentionMicroseconds, maxLiveBytes: maxLiveBytes) : nil
    }
}
