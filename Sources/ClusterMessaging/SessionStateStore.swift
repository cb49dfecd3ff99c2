// Where a persistent session's state lives for the cluster: one record per session in the
// JetStream stream CUSTODY_SESSIONS (`custody.s.<hex of the session name>`, the last message
// per subject kept: a key-value bucket). The node holding the session writes it when the
// session attaches, changes its subscriptions and detaches: its subscriptions, and a time no
// message it has not acknowledged predates. Another node taking the session on reads it
// (`SessionHandover`); a session that ends has its record deleted. Every node also hears
// the records written (core NATS) and forgets the local state of a session that now lives
// elsewhere.
import Broker
import Foundation
import LedgerCore
import Logging
import MQTTCodec
import NATSClient
import NIOCore
import Synchronization

/// A persistent session as the cluster keeps it.
public struct SessionStateRecord: Codable, Sendable, Equatable {
    /// The node that held it when this was written.
    public var node: String
    public var connected: Bool
    /// µs since the epoch: no message the session had not acknowledged arrived before it.
    /// Every message stored in JetStream before it was routed by the node's consumer, too.
    public var since: Int64
    public var subscriptions: [ClusterSubscription]
    /// Whether it outlives its connection (nil in records without wills: true).
    public var persistent: Bool?
    /// While connected: its will as an MQTT 5.0 PUBLISH packet, and the seconds it waits
    /// after the connection is lost (`willDelay`), for the node that sees this one die.
    public var will: Data?
    public var willDelay: UInt32?

    /// The will as its client gave it (without its delay); nil without one.
    public var willMessage: MQTTWill? {
        guard let will, let publish = ClusterMessageCodec.decode(ByteBuffer(bytes: will)) else { return nil }
        return MQTTWill(topic: publish.topicName, payload: publish.payload, qos: publish.qos, retain: publish.retain, properties: publish.properties)
    }
}

final class SessionStateStore: @unchecked Sendable {
    static let prefix = "custody.s"

    let jetStream: JetStream
    let settings: ClusterMessagingSettings
    let broker: Broker
    let logger: Logger
    private let runID = UUID().uuidString.prefix(8)
    private let counter = Atomic<UInt64>(0)
    /// Whether etcd gives this node the session now (nil: always). Boxed: a bare closure
    /// kept in a `Mutex` gains a reabstraction thunk with every `withLock { $0 }`.
    private final class Owner: Sendable {
        let owns: @Sendable (SessionName) -> Bool
        init(_ owns: @escaping @Sendable (SessionName) -> Bool) { self.owns = owns }
    }
    private let owner = Mutex<Owner?>(nil)
    /// Sessions this node dropped because another node took them, with their `pendingSince`
    /// then and when they went (uptime ns): the taking node may ask a moment later.
    private let dropped = Mutex<[SessionName: (since: Int64, at: UInt64)]>([:])
    /// When JetStream stored the oldest message the node's consumer may not have routed yet
    /// (µs; nil: it has routed everything it was given and nothing was pending behind).
    var consumedThrough: @Sendable () -> Int64? = { nil }

    init(jetStream: JetStream, settings: ClusterMessagingSettings, broker: Broker, logger: Logger) {
        self.jetStream = jetStream
        self.settings = settings
        self.broker = broker
        self.logger = logger
    }

    /// The record's subject: the session name's UTF-8 bytes in hex (any name, one token).
    static func subject(_ name: SessionName) -> String {
        var subject = prefix + "."
        for byte in name.value.utf8 {
            subject.append(Character(Unicode.Scalar(SubjectMapping.hex(byte >> 4))))
            subject.append(Character(Unicode.Scalar(SubjectMapping.hex(byte & 0xF))))
        }
        return subject
    }

    static func name(subject: String) -> SessionName? {
        guard subject.hasPrefix(prefix + ".") else { return nil }
        let hex = Array(subject.utf8.dropFirst(prefix.utf8.count + 1))
        guard hex.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.count / 2)
        var index = 0
        while index < hex.count {
            guard let high = SubjectMapping.unhex(hex[index]), let low = SubjectMapping.unhex(hex[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { return nil }
        return SessionName(unchecked: text)
    }

    static func ensureStream(_ jetStream: JetStream, _ settings: ClusterMessagingSettings) async throws {
        var config = StreamConfig(name: settings.sessionStreamName, subjects: [prefix + ".>"])
        config.numReplicas = settings.replicas
        config.maxMsgsPerSubject = 1
        config.duplicateWindow = 120_000_000_000
        _ = try await jetStream.ensureStream(config)
    }

    /// Where a node answers what a session held there still waits for (`askPendingSince`).
    static func pendingSubject(node: String) -> String {
        "custody.pending." + subject(SessionName(unchecked: node)).dropFirst(prefix.count + 1)
    }

    /// A time no message the session has not acknowledged here predates, and none this node's
    /// consumer has yet to route: the older of the broker's and the consumer's.
    func pendingSince(_ name: SessionName) -> Int64? {
        guard let since = broker.pendingSince(name) else {
            let now = DispatchTime.now().uptimeNanoseconds
            return dropped.withLock { $0[name].flatMap { now - $0.at < 60_000_000_000 ? $0.since : nil } }
        }
        return min(since, consumedThrough() ?? since)
    }

    private func remember(_ name: SessionName, since: Int64) {
        let now = DispatchTime.now().uptimeNanoseconds
        dropped.withLock { dropped in
            if dropped.count >= 1024 { dropped = dropped.filter { now - $0.value.at < 60_000_000_000 } }
            dropped[name] = (since, now)
        }
    }

    /// Asks `node` for `pendingSince` of a session it holds (a takeover from a live node):
    /// nil when it does not answer within a second or holds nothing.
    func askPendingSince(_ name: SessionName, node: String) async -> Int64? {
        guard let reply = try? await jetStream.connection.request(
            Self.pendingSubject(node: node), payload: ByteBuffer(string: name.value), timeout: .seconds(1))
        else { return nil }
        return Int64(String(buffer: reply.payload))
    }

    /// Hears the records other nodes write: a session that lives elsewhere now (or ended)
    /// loses its state here; and answers what a session held here still waits for.
    func start(_ connection: NATSConnection) throws {
        try connection.subscribe(Self.pendingSubject(node: settings.nodeID)) { [weak self] message in
            guard let self, let reply = message.replyTo else { return }
            let since = self.pendingSince(SessionName(unchecked: String(buffer: message.payload)))
            try? connection.publish(reply, payload: ByteBuffer(string: since.map(String.init) ?? ""))
        }
        try connection.subscribe(Self.prefix + ".>") { [weak self] message in
            guard let self, let name = Self.name(subject: message.subject) else { return }
            let record = message.payload.readableBytes == 0
                ? nil : try? JSONDecoder().decode(SessionStateRecord.self, from: Data(message.payload.readableBytesView))
            guard record?.node != self.settings.nodeID else { return }
            self.forgetHere(name)
        }
    }

    func setOwner(_ owns: @escaping @Sendable (SessionName) -> Bool) {
        owner.withLock { $0 = Owner(owns) }
    }

    private func owns(_ name: SessionName) -> Bool {
        owner.withLock { $0 }?.owns(name) ?? true
    }

    /// `since`: its `pendingSince` when known (under the broker's lock it cannot be asked).
    private func forgetHere(_ name: SessionName, since known: Int64? = nil) {
        let broker = self.broker
        let logger = self.logger
        Task {
            if let since = known ?? self.pendingSince(name) { self.remember(name, since: since) }
            do {
                if try await broker.forgetMovedSession(name) {
                    logger.info("cluster: session lives on another node now; its state here is dropped", metadata: ["session_name": "\(name)"])
                }
            } catch {
                logger.warning("cluster: stale state of a moved session not dropped: \(error)", metadata: ["session_name": "\(name)"])
            }
        }
    }

    /// Under the broker's lock: written (in the broker's order) while this node holds the
    /// session; a session etcd gives another node now is forgotten here instead.
    func changed(_ snapshot: BrokerSessionSnapshot) -> EventLoopFuture<Void>? {
        guard owns(snapshot.name) else {
            forgetHere(snapshot.name, since: min(snapshot.pendingSince, consumedThrough() ?? snapshot.pendingSince))
            return nil
        }
        var record = SessionStateRecord(
            node: settings.nodeID, connected: snapshot.connected,
            since: min(snapshot.pendingSince, consumedThrough() ?? snapshot.pendingSince), subscriptions: snapshot.subscriptions)
        if let will = snapshot.will {
            record.will = (try? ClusterMessageCodec.encode(will.publish)).map { Data($0.readableBytesView) }
            record.willDelay = snapshot.willDelay
            record.persistent = snapshot.persistent
        }
        guard let bytes = try? JSONEncoder().encode(record) else { return nil }
        let name = snapshot.name
        let logger = self.logger
        let stored = jetStream.publishFuture(
            Self.subject(name), payload: ByteBuffer(bytes: bytes), messageID: "\(settings.nodeID)-\(runID)-s\(counter.add(1, ordering: .relaxed).newValue)"
        ).map { _ in () }
        stored.whenFailure { error in
            logger.error("cluster: a persistent session's state was not stored in JetStream: \(error)", metadata: ["session_name": "\(name)"])
        }
        return stored
    }

    /// The session ended: its record goes (an empty one first, which the other nodes hear,
    /// then every message of the subject up to it; a record written after it stays).
    func ended(_ name: SessionName) {
        let subject = Self.subject(name)
        let jetStream = self.jetStream
        let stream = settings.sessionStreamName
        let logger = self.logger
        jetStream.publishFuture(subject, payload: ByteBuffer(), messageID: "\(settings.nodeID)-\(runID)-e\(counter.add(1, ordering: .relaxed).newValue)")
            .whenComplete { result in
                switch result {
                case .success(let ack):
                    Task {
                        do {
                            try await jetStream.purge(stream: stream, subject: subject, before: ack.sequence + 1)
                        } catch {
                            logger.warning("cluster: an ended session's record was not purged: \(error)", metadata: ["session_name": "\(name)"])
                        }
                    }
                case .failure(let error):
                    logger.error("cluster: an ended session's record was not deleted: \(error)", metadata: ["session_name": "\(name)"])
                }
            }
    }

    /// The record of `name`; nil when the cluster keeps none (or it ended).
    func record(of name: SessionName) async throws -> SessionStateRecord? {
        guard let stored = try await jetStream.lastMessage(stream: settings.sessionStreamName, subject: Self.subject(name)),
            !stored.data.isEmpty
        else { return nil }
        return try JSONDecoder().decode(SessionStateRecord.self, from: stored.data)
    }
}
