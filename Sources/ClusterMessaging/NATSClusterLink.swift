// The broker's cluster link on NATS: QoS 0 over core NATS, QoS 1 and 2 through a JetStream
// stream that every node consumes with a durable pull consumer of its own.
//
// Each node delivers its own clients' messages locally, as on one node, and skips its own
// messages when they come back from NATS (they carry its node id). That keeps a node's local
// latency and its single-node behaviour, and the publisher's PUBACK waits for both the local
// store and JetStream's acknowledgement. nats-server 2.9 gives a consumer one filter subject,
// so a node's consumer takes every message (`custody.m.>`) and the node's topic tree picks
// what its sessions subscribed to; a message is acknowledged to JetStream (ack policy "all",
// one ack per batch, in order) only once it was delivered here or stored for an offline session.
import Broker
import Foundation
import LedgerCore
import Logging
import MQTTCodec
import NATSClient
import NIOCore
import Synchronization

public struct ClusterMessagingSettings: Sendable {
    public var nodeID: String
    public var servers: [NATSServer]
    /// The stream's replicas: 1 on one NATS server, 3 on a cluster of three or more.
    public var replicas: Int
    public var streamName = "CUSTODY_MESSAGES"
    /// The last retained message of each topic (an empty one: cleared), for nodes that start later.
    public var retainedStreamName = "CUSTODY_RETAINED"
    /// Each persistent session's subscriptions and pending-since time (`SessionStateStore`).
    public var sessionStreamName = "CUSTODY_SESSIONS"
    /// A session taken on from another node reads the stream from its record's `since` less
    /// this, for clocks of nodes and NATS servers that disagree a little.
    public var handoverMarginSeconds: Int64 = 2
    /// How long the stream keeps a message that a stopped node has not consumed.
    public var maxAgeSeconds: Int64 = 3600
    /// How long JetStream waits for a node's ack before delivering again.
    public var ackWaitSeconds: Int64 = 30
    /// JetStream messages the node's consumer asks for at once (each a batch of up to
    /// `batchMessages` MQTT messages). What it hands the broker at a time is bounded by the
    /// room in the sessions' queues instead (`NATSClusterLink+Consume.swift`).
    public var pullBatch = 128
    /// A connected session's queue that did not move for this long no longer holds the
    /// consumer back (a stalled client: its queue drops its oldest, as on one node).
    public var roomStalledAfterMicroseconds: Int64 = 2_000_000
    /// At most this many QoS 1/2 messages of one topic, and this many bytes of them, in one
    /// JetStream message (`ReliableBatcher`); 1: each alone (codec version 1, which nodes
    /// older than the batching read).
    public var batchMessages = 256
    public var batchBytes = 128 * 1024
    /// How long the first QoS 1/2 message waits for others to join its batch (its PUBACK later by as much).
    public var batchLingerMicroseconds: Int64 = 1000

    public init(nodeID: String, servers: [NATSServer], replicas: Int = 1) {
        self.nodeID = nodeID
        self.servers = servers
        self.replicas = replicas
    }

    /// The node's durable consumer: consumer names take no `.` (node ids may), so `_` is
    /// doubled and `.` written `_d`.
    public var consumerName: String {
        "custody-node-" + nodeID.replacingOccurrences(of: "_", with: "__").replacingOccurrences(of: ".", with: "_d")
    }
}

public final class NATSClusterLink: BrokerClusterLink, @unchecked Sendable {
    public static let reliableMapping = SubjectMapping(prefix: "custody.m")
    public static let bestEffortMapping = SubjectMapping(prefix: "custody.q")
    public static let retainedMapping = SubjectMapping(prefix: "custody.r")
    static let nodeHeader = "Custody-Node"

    public let settings: ClusterMessagingSettings
    public let connection: NATSConnection
    let jetStream: JetStream
    let broker: Broker
    let logger: Logger
    let pull: PullConsumer
    private let headers: NATSHeaders
    private let runID: String
    /// Numbers the retained messages' Nats-Msg-Ids (the message stream's batches are numbered by `batcher`).
    private let sequence = Atomic<UInt64>(0)
    private let batcher: ReliableBatcher
    /// QoS 1/2 messages handed to JetStream, and those JetStream answered (either way).
    private let reliableIssued = Atomic<UInt64>(0)
    private let reliableAnswered = Atomic<UInt64>(0)
    let stats = Mutex(ClusterMessageCounts())
    private var consuming: Task<Void, Never>?
    private let shares: SharedSubscriptionConsumers
    let sessions: SessionStateStore
    let gate = ConsumeGate()
    /// When JetStream stored the oldest message this node's consumer may not have routed yet
    /// (µs; 0: none, it has routed all it was given, with nothing pending behind them).
    let consumedThrough = Atomic<Int64>(0)

    /// Connects, makes the stream and this node's consumer when missing, and starts taking
    /// other nodes' messages; then shows the broker's publishes to NATS.
    public static func start(_ settings: ClusterMessagingSettings, broker: Broker, logger: Logger) async throws -> NATSClusterLink {
        let connection = try await NATSConnection.connect(
            NATSOptions(servers: settings.servers, name: "custody-\(settings.nodeID)", noEcho: true))
        do {
            let jetStream = JetStream(connection)
            var stream = StreamConfig(name: settings.streamName, subjects: [reliableMapping.prefix + ".>"])
            stream.numReplicas = settings.replicas
            stream.maxAge = settings.maxAgeSeconds * 1_000_000_000
            stream.duplicateWindow = 120_000_000_000
            _ = try await retryingWhileJetStreamStarts { try await jetStream.ensureStream(stream) }
            var retained = StreamConfig(name: settings.retainedStreamName, subjects: [retainedMapping.prefix + ".>"])
            retained.numReplicas = settings.replicas
            retained.maxMsgsPerSubject = 1
            retained.duplicateWindow = 120_000_000_000
            _ = try await jetStream.ensureStream(retained)
            try await loadRetained(jetStream, settings, broker)
            try await SessionStateStore.ensureStream(jetStream, settings)
            if try await jetStream.consumerInfo(stream: settings.streamName, name: settings.consumerName) == nil {
                var consumer = ConsumerConfig(durableName: settings.consumerName)
                // A new node takes what is published from now on; a node that restarts goes on
                // from its consumer's position.
                consumer.deliverPolicy = "new"
                consumer.ackPolicy = "all"
                consumer.ackWait = settings.ackWaitSeconds * 1_000_000_000
                consumer.maxAckPending = 65_536
                consumer.numReplicas = settings.replicas
                _ = try await jetStream.createConsumer(stream: settings.streamName, consumer)
            }
            let pull = try PullConsumer(jetStream, stream: settings.streamName, consumer: settings.consumerName,
                                        batch: settings.pullBatch, expires: .seconds(5))
            let link = NATSClusterLink(settings, connection, jetStream, broker, pull, logger)
            try connection.subscribe(bestEffortMapping.prefix + ".>") { [weak link] in link?.arrivedBestEffort($0) }
            try link.sessions.start(connection)
            try await connection.flush()
            link.consuming = Task { await link.consume() }
            broker.setClusterLink(link)
            link.shares.start()
            return link
        } catch {
            await connection.close()
            throw error
        }
    }

    private init(
        _ settings: ClusterMessagingSettings, _ connection: NATSConnection, _ jetStream: JetStream, _ broker: Broker,
        _ pull: PullConsumer, _ logger: Logger
    ) {
        self.settings = settings
        self.connection = connection
        self.jetStream = jetStream
        self.broker = broker
        self.pull = pull
        self.logger = logger
        let headers = NATSHeaders([(Self.nodeHeader, settings.nodeID)])
        let runID = String(UUID().uuidString.prefix(8))
        self.headers = headers
        self.runID = runID
        let prefix = "\(settings.nodeID)-\(runID)-"
        batcher = ReliableBatcher(loop: connection.eventLoop, maxMessages: settings.batchMessages, maxBytes: settings.batchBytes,
                                  linger: .microseconds(settings.batchMessages > 1 ? settings.batchLingerMicroseconds : 0)) {
            subject, payload, number in
            jetStream.publishFuture(subject, payload: payload, headers: headers, messageID: prefix + String(number)).map { _ in () }
        }
        shares = SharedSubscriptionConsumers(jetStream: jetStream, broker: broker, settings: settings, logger: logger)
        sessions = SessionStateStore(jetStream: jetStream, settings: settings, broker: broker, logger: logger)
        sessions.consumedThrough = { [weak self] in
            guard let self else { return nil }
            let through = self.consumedThrough.load(ordering: .relaxed)
            return through == 0 ? nil : through
        }
    }

    /// JetStream answers 503 or nobody while a fresh cluster elects its meta leader.
    static func retryingWhileJetStreamStarts<T>(_ body: () async throws -> T) async throws -> T {
        let deadline = Date().addingTimeInterval(30)
        while true {
            do {
                return try await body()
            } catch let error as JetStreamError where error.code == 503 && Date() < deadline {
            } catch NATSError.noResponders where Date() < deadline {
            } catch NATSError.timeout where Date() < deadline {
            }
            try await Task.sleep(nanoseconds: 200_000_000)
        }
    }

    /// The retained messages the cluster keeps, into this node's broker before it takes
    /// anything else: an ephemeral consumer delivering the last message of each subject.
    static func loadRetained(_ jetStream: JetStream, _ settings: ClusterMessagingSettings, _ broker: Broker) async throws {
        var config = ConsumerConfig(durableName: nil)
        config.deliverPolicy = "last_per_subject"
        config.ackPolicy = "none"
        config.filterSubject = retainedMapping.prefix + ".>"
        config.inactiveThreshold = 30_000_000_000
        let consumer = try await jetStream.createConsumer(stream: settings.retainedStreamName, config)
        var remaining = Int(consumer.numPending ?? 0)
        guard remaining > 0 else {
            try? await jetStream.deleteConsumer(stream: settings.retainedStreamName, name: consumer.name)
            return
        }
        let pull = try PullConsumer(jetStream, stream: settings.retainedStreamName, consumer: consumer.name, batch: 1000,
                                    expires: .seconds(2))
        defer { pull.stop() }
        let deadline = Date().addingTimeInterval(60)
        while remaining > 0, Date() < deadline {
            let messages = await pull.nextBatch()
            remaining -= messages.count
            try await broker.keepRetainedFromCluster(messages.flatMap { ClusterMessageCodec.decodeBatch($0.payload) ?? [] })
        }
        try? await jetStream.deleteConsumer(stream: settings.retainedStreamName, name: consumer.name)
    }

    // MARK: - Out: what this node's clients publish

    public func forward(_ publish: MQTTPublish, stored: (@Sendable (Result<Void, any Error>) -> Void)?) {
        let payload: ByteBuffer
        do {
            payload = try ClusterMessageCodec.encode(publish)
        } catch {
            logger.error("cluster: message to '\(publish.topicName)' cannot be encoded for NATS: \(error)")
            stored?(.failure(error))
            return
        }
        // A retained message is also kept as its topic's last one, for nodes that start later.
        let kept = publish.retain
            ? jetStream.publishFuture(
                Self.retainedMapping.subject(topic: publish.topicName), payload: payload, headers: headers,
                messageID: "\(settings.nodeID)-\(runID)-r\(sequence.add(1, ordering: .relaxed).newValue)"
            ).map { _ in () }
            : nil
        guard let stored, publish.qos != .atMostOnce else {
            // Best effort, as within one node: dropped while NATS is unreachable and its buffer full.
            try? connection.publish(Self.bestEffortMapping.subject(topic: publish.topicName), payload: payload, headers: headers)
            stats.withLock { $0.sentBestEffort += 1 }
            return
        }
        stats.withLock { $0.sentReliable += 1 }
        reliableIssued.add(1, ordering: .relaxed)
        batcher.add(payload, subject: Self.reliableMapping.subject(topic: publish.topicName)) { result in
            // On the connection's event loop, where `kept` completes too.
            self.reliableAnswered.add(1, ordering: .relaxed)
            guard let kept, case .success = result else { return stored(result) }
            kept.whenComplete { stored($0) }
        }
    }

    // MARK: - In: what other nodes' clients published

    private func arrivedBestEffort(_ message: NATSMessage) {
        guard message.headers?[Self.nodeHeader] != settings.nodeID,
            let publish = ClusterMessageCodec.decode(message.payload)
        else { return }
        stats.withLock { $0.receivedBestEffort += 1 }
        try? broker.publishFromClusterAtOnce([publish])
    }

    // MARK: - Persistent sessions across nodes

    public func sessionChanged(_ snapshot: BrokerSessionSnapshot) -> EventLoopFuture<Void>? {
        sessions.changed(snapshot)
    }

    public func sessionEnded(_ name: SessionName) {
        sessions.ended(name)
    }

    /// Whether etcd gives this node a session now: only its holder writes its record.
    public func setSessionOwner(_ owns: @escaping @Sendable (SessionName) -> Bool) {
        sessions.setOwner(owns)
    }

    /// Before a CONNECT for `name` is granted here (`present`: its state goes on;
    /// `previousNode`: the node that held it, nil for a new session): a session that lived on
    /// another node (or whose state this node lacks) is taken on from its record in JetStream;
    /// a clean start of a session that lived before deletes its record. Throws when its
    /// state cannot be read (the CONNECT is then refused, nothing lost).
    public func prepareSession(_ name: SessionName, present: Bool, previousNode: String?) async throws {
        guard present else {
            if previousNode != nil { sessions.ended(name) }
            return
        }
        if previousNode == settings.nodeID, broker.hasSession(name) { return }
        guard var record = try await sessions.record(of: name) else { return }
        if record.node == settings.nodeID, broker.hasSession(name) { return }

        if record.connected, record.node != settings.nodeID, let since = await sessions.askPendingSince(name, node: record.node) {
            // Still attached on a node that answers (a takeover): what it has not delivered yet.
            record.since = max(record.since, since)
        }
        _ = try await SessionHandover(jetStream: jetStream, settings: settings, broker: broker, gate: gate, logger: logger, own: self)
            .takeOn(name, record)
    }

    /// The Nats-Msg-Id of this node's messages in this run: this, then a number.
    var ownMessageIDPrefix: String { "\(settings.nodeID)-\(runID)-" }
    /// Hands this node's waiting batches to NATS; returns the last number given to one of
    /// them (every message forwarded before the call has a number up to it).
    func flushedMessageNumber() async -> UInt64 { await batcher.flushed() }

    /// Waits until JetStream has answered every QoS 1/2 message this node handed it so far
    /// (at most `limit`: a publish is tried again for 30 s).
    func ownMessagesAnswered(limit: Duration = .seconds(35)) async {
        let target = reliableIssued.load(ordering: .relaxed)
        let deadline = ContinuousClock.now + limit
        while reliableAnswered.load(ordering: .relaxed) < target, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Sessions the ledger ended (expired): the cluster's records of them go.
    public func sessionsExpired(_ names: [SessionName]) {
        for name in names { sessions.ended(name) }
    }

    /// What the link has carried since it started.
    public var counts: ClusterMessageCounts { stats.withLock { $0 } }

    /// Stops forwarding and consuming, and closes the connection.
    public func close() async {
        broker.setClusterLink(nil)
        // Batches still waiting go to NATS (stored, or failed as the connection closes), so
        // that no PUBACK waits on a batch the closed loop would never send.
        _ = await batcher.flushed()
        await shares.stop()
        pull.stop()
        await consuming?.value
        await connection.close()
    }
}

public struct ClusterMessageCounts: Sendable, Equatable {
    public var sentBestEffort = 0
    public var sentReliable = 0
    public var receivedBestEffort = 0
    public var receivedReliable = 0
    /// Received again after a node did not acknowledge them in time (duplicates to clients).
    public var redelivered = 0
    /// JetStream messages from other nodes taken without decoding them: no session here
    /// subscribed to their topic (and none of their MQTT messages is retained).
    public var skippedBatches = 0
}
