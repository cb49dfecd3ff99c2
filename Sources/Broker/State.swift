import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore

// What the broker keeps per message and per session; every mutable field is guarded by the
// broker's lock (hence @unchecked Sendable).

enum OutboundState: UInt8 {
    case queued = 0
    case awaitingAck = 1
    case awaitingRec = 2
    case awaitingComp = 3
}

/// One accepted PUBLISH, shared by every session it goes to (the payload is the received
/// packet's slice; nothing is copied per subscriber).
final class Message: @unchecked Sendable {
    /// As received, without Topic Alias and Subscription Identifiers; QoS as published.
    let publish: MQTTPublish
    /// Wall clock, µs, for the Message Expiry Interval.
    let receivedAt: Int64
    /// When its Message Expiry Interval runs out (µs); nil: never.
    let expiresAt: Int64?
    /// Its key in the `messages` table; 0 while it is not stored.
    var storeKey: UInt64 = 0
    /// Stored deliveries that need it; at 0 the stored copy is deleted.
    var references = 0

    /// What it weighs in a session queue (`BrokerLimits.queueMaxBytes`).
    var payloadBytes: Int { publish.payload.readableBytes }

    init(publish: MQTTPublish, receivedAt: Int64) {
        self.publish = publish
        self.receivedAt = receivedAt
        expiresAt = publish.properties.messageExpiryInterval.map { receivedAt + Int64($0) * 1_000_000 }
    }

    /// A payload that may be held for long (queued, in flight, retained) keeps its own
    /// storage when it is a small slice of a large read buffer: otherwise every queued message
    /// could pin a whole receive buffer. One copy per message, never per subscriber.
    static func compacted(_ payload: ByteBuffer) -> ByteBuffer {
        guard payload.storageCapacity > 4096, payload.storageCapacity > 2 * payload.readableBytes else { return payload }
        var copy = ByteBufferAllocator().buffer(capacity: payload.readableBytes)
        copy.writeImmutableBuffer(payload)
        return copy
    }
}

/// One message on its way from the broker to one session (QoS 1 or 2): queued, in flight, or
/// awaiting PUBCOMP.
final class OutboundMessage: @unchecked Sendable {
    /// Broker-wide, increasing: a session's deliveries go out in this order.
    let sequence: UInt64
    let message: Message
    let qos: MQTTQoS
    let retain: Bool
    let identifiers: [UInt32]
    /// The shared subscription (`$share/{ShareName}/{filter}`) it was chosen for, if any: if
    /// the session ends before the client has it, another member gets it.
    let share: String?
    var packetIdentifier: UInt16 = 0
    var state: OutboundState = .queued
    /// Sent at least once: a resend carries DUP.
    var sent = false
    /// A record of it is (or is being) written in the store.
    var stored = false
    /// False while its store write is not committed: it is not sent before it is durable.
    var durable = true
    /// Its stored record still says queued although it is in flight (QoS 1 taken from the
    /// queue: `Broker.pump`); written at the broker's close (`writeStaleRecords`).
    var recordStale = false

    init(sequence: UInt64, message: Message, qos: MQTTQoS, retain: Bool, identifiers: [UInt32], share: String? = nil) {
        self.sequence = sequence
        self.message = message
        self.qos = qos
        self.retain = retain
        self.identifiers = identifiers
        self.share = share
    }
}

/// A session's pub/sub state. Every field is guarded by the broker's lock.
final class SessionState: @unchecked Sendable {
    let name: SessionName
    /// The key prefix of its records in the store; made on first use (only persistent
    /// sessions write records).
    lazy var prefix: [UInt8] = BrokerRecords.sessionPrefix(name)
    /// `prefix` + the delivery kind: its delivery records' keys are this + their sequence.
    lazy var deliveryPrefix: [UInt8] = prefix + [BrokerRecords.deliveryKind]
    var persistent: Bool
    var sink: BrokerSink?
    /// The token of the `BrokerSession` currently attached; 0 when detached.
    var attachment: UInt64 = 0
    var version: MQTTProtocolVersion = .mqtt5
    var window = 65535
    var maximumPacketSize: Int?
    /// PUBLISHes not sent because they exceed `maximumPacketSize`.
    var discarded = 0
    var subscriptions: [String: Subscriber] = [:]
    var inflight: [UInt16: OutboundMessage] = [:]
    /// Allocated by the first message queued: most sessions never queue one. Changed only
    /// through the methods below, which keep `queuedBytes` with it.
    private(set) var queue = LazyFIFO<OutboundMessage>()
    /// Payload bytes of the messages in `queue` (`BrokerLimits.queueMaxBytes`).
    private(set) var queuedBytes = 0
    /// Its queue overflowed under `QueueOverflowPolicy.endSession`: nothing more is queued
    /// for it while it waits to be ended.
    var overflowed = false
    var nextPacketIdentifier: UInt16 = 1
    var inboundQoS2: Set<UInt16> = []
    /// Inbound QoS 2 messages whose commit is not known yet: a resend of one (after a
    /// takeover, say) must not be acknowledged before the original is durable.
    var inboundCommits: [UInt16: CommitWaiter] = [:]
    var dropped = 0
    /// Who holds the session (`BrokerSession.describePublisher`), for the publish tap.
    var publisher: PublisherFacts?
    /// Queued messages dropped because their Message Expiry Interval passed.
    var expired = 0
    /// The current connection may subscribe to the server's topics (`$custody/...`).
    var readsServerTopics = false
    /// The queue may hold a message with a Message Expiry Interval (the sweep looks only here).
    var queueMayExpire = false
    /// The cluster link was told of it (`tellClusterOfSession`): its end is told too.
    var clusterKept = false
    /// The current connection's will message (`BrokerSession.setWill`), and the session
    /// expiry interval that bounds its delay.
    var will: MQTTWill? {
        get { wills?.will }
        set { if newValue != nil || wills != nil { willsForWriting.will = newValue } }
    }
    var willSessionExpiry: UInt32? {
        get { wills?.willSessionExpiry }
        set { if newValue != nil || wills != nil { willsForWriting.willSessionExpiry = newValue } }
    }
    /// A will waiting for its Will Delay Interval after the connection ended, until
    /// `willDue` (the broker's clock, µs); `willOrder` orders wills due at the same time.
    var pendingWill: MQTTWill? {
        get { wills?.pendingWill }
        set { if newValue != nil || wills != nil { willsForWriting.pendingWill = newValue } }
    }
    var willDue: Int64 {
        get { wills?.willDue ?? .max }
        set { willsForWriting.willDue = newValue }
    }
    var willOrder: UInt64 {
        get { wills?.willOrder ?? 0 }
        set { willsForWriting.willOrder = newValue }
    }
    /// A `W` record of the will is in the store (persistent sessions, delay > 0).
    var willStored: Bool {
        get { wills?.willStored ?? false }
        set { if newValue || wills != nil { willsForWriting.willStored = newValue } }
    }
    /// The will fields, out of line: most sessions never have a will. Kept once made.
    private var wills: WillState?
    private var willsForWriting: WillState {
        if let wills { return wills }
        let made = WillState()
        wills = made
        return made
    }

    final class WillState {
        var will: MQTTWill?
        var willSessionExpiry: UInt32?
        var pendingWill: MQTTWill?
        var willDue: Int64 = .max
        var willOrder: UInt64 = 0
        var willStored = false
    }
    /// Packets decided under the lock, sent after it (see `Broker.drain`).
    var outbox: [MQTTPacket] = []
    var draining = false
    var dirty = false
    /// Routing scratch (see `TopicTree.match`).
    var matchStamp: UInt64 = 0
    var matchIndex = 0
    /// Deliveries taken from the queue into flight so far (`Broker.pump`; not those dropped or
    /// expired): `Broker.routingRoom` takes a queue that does not move for a stalled client's.
    /// The count at the broker's last look, and when it last saw it move (its clock, µs).
    var dequeued = 0
    var dequeuedSeen = 0
    var queueMovedAt: Int64 = 0

    init(name: SessionName, persistent: Bool) {
        self.name = name
        self.persistent = persistent
    }

    func appendQueued(_ delivery: OutboundMessage) {
        queue.append(delivery)
        queuedBytes += delivery.message.payloadBytes
    }

    /// Back at the head: a dropped delivery restored because its drop was not written.
    func prependQueued(_ delivery: OutboundMessage) {
        queue.prepend(delivery)
        queuedBytes += delivery.message.payloadBytes
    }

    /// The head of the queue, which must be there.
    func removeFirstQueued() -> OutboundMessage {
        let delivery = queue.removeFirst()
        queuedBytes -= delivery.message.payloadBytes
        return delivery
    }

    /// Removes the queued deliveries `isRemoved` picks, keeping the order of the others;
    /// returns the removed ones, in queue order.
    func removeQueued(where isRemoved: (OutboundMessage) -> Bool) -> [OutboundMessage] {
        guard queue.contains(where: isRemoved) else { return [] }
        var kept = LazyFIFO<OutboundMessage>(initialCapacity: queue.count)
        var removed: [OutboundMessage] = []
        for delivery in queue {
            if isRemoved(delivery) {
                removed.append(delivery)
                queuedBytes -= delivery.message.payloadBytes
            } else {
                kept.append(delivery)
            }
        }
        queue = kept
        return removed
    }

    func removeAllQueued() {
        queue.removeAll()
        queuedBytes = 0
    }
}
