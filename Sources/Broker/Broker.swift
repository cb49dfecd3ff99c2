// The pub/sub core: see DESIGN.md §3.
import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore

/// Where a session's outbound packets go: the front writes them to the session's current connection.
///
/// The broker calls `send` outside its lock, from whichever thread made the decision (a
/// publisher's, or the store's writer thread once a message is durable), one call at a time
/// per session and in the order the broker decided the packets (packet identifiers, per-topic
/// order). `send` should only hand the packets over (a channel write, an event loop
/// `execute`); it may call back into the broker (e.g. `detach` when the write fails).
public protocol BrokerSink: AnyObject, Sendable {
    func send(_ packets: [MQTTPacket])   // called from any thread; must not block long
}

/// A packet the broker refuses, or state it could not make durable. The front closes the
/// connection with `reasonCode` (in a v5 DISCONNECT) and logs `detail`.
public struct BrokerError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reasonCode: MQTTReasonCode
    public var detail: String

    public init(_ reasonCode: MQTTReasonCode, _ detail: String) {
        self.reasonCode = reasonCode
        self.detail = detail
    }

    static func storage(_ error: LedgerError) -> BrokerError {
        BrokerError(error.isMapFull ? .quotaExceeded : .unspecifiedError, "broker storage failed: \(error)")
    }

    public var description: String { "\(reasonCode): \(detail)" }
}

/// What the broker holds for one session; for tests, tools and logs.
public struct BrokerSessionInfo: Sendable, Equatable {
    public var attached: Bool
    public var persistent: Bool
    /// Topic filters, sorted.
    public var subscriptions: [String]
    /// Messages waiting for a free slot in the in-flight window (or for the client to return).
    public var queued: Int
    /// Messages sent (or to be sent) and not yet acknowledged, plus PUBRELs not yet completed.
    public var inflight: Int
    /// Messages dropped because the queue was full.
    public var dropped: Int
    /// Inbound QoS 2 packet identifiers awaiting PUBREL.
    public var inboundAwaitingRelease: Int
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    public var discardedTooLarge: Int
    /// Queued messages dropped because their Message Expiry Interval passed first.
    public var expired: Int
    /// A will message waits for its Will Delay Interval.
    public var willPending: Bool
}

/// The pub/sub core: topic tree, subscriptions, QoS 0/1/2 flows in both directions,
/// per-session queues and in-flight windows, and persistence of sessions with an expiry.
///
/// **Durability.** For a persistent session (expiry > 0) its subscriptions, queued and
/// in-flight QoS 1/2 messages, and inbound QoS 2 identifiers awaiting PUBREL live in an LMDB
/// store (`directory`). A SUBACK, UNSUBACK, PUBACK, PUBREC or PUBCOMP that promises something
/// is returned only after it is committed (group commit: one writer thread, one transaction
/// and one fsync for every waiting write). A message bound for a persistent session is also
/// sent to it only once durable, so that nothing a client received can be forgotten by a
/// crash. Bookkeeping that promises nothing to anyone (an acknowledged message deleted, a
/// packet identifier assigned) is written in the same order but not waited for: after a crash
/// such a message is delivered again with DUP, which QoS 1 allows and QoS 2's packet
/// identifier check absorbs.
///
/// **Offline queue.** Each session queues at most `offlineQueueLimit` messages (default 1000)
/// beyond its in-flight window. When the queue is full the OLDEST queued message is dropped
/// and counted (`BrokerSessionInfo.dropped`, `droppedMessages`): a device that returns after
/// a long absence gets the latest state rather than a stale backlog. (Event Grid would end the
/// session with SessionOverflow instead.) QoS 0 messages are not queued for detached sessions.
///
/// **In-flight window.** At most the client's Receive Maximum (clamped to 1...65535) QoS 1/2
/// messages are unacknowledged at once; the rest wait in the queue. The front passes the v5
/// CONNECT's Receive Maximum (65535 when absent) and may pass a smaller bound (e.g. 20) for
/// 3.1.1 clients, which announce none.
///
/// **Order.** Messages to one session go out in the order the broker accepted them, per QoS.
/// The front should hand one connection's packets to `handle` one at a time (awaiting each),
/// so that one publisher's messages keep their order.
///
/// **Retained messages.** A PUBLISH with RETAIN replaces its topic's retained message (an
/// empty payload deletes it), in memory and in the store (`retained` table), committed before
/// the PUBACK/PUBREC. A SUBSCRIBE gets the matching retained messages (RETAIN 1, at the lower
/// of the message's and the subscription's QoS) after its SUBACK, in `handle`'s answers, as
/// Retain Handling says (3.1.1: always).
///
/// **Shared subscriptions.** `$share/{ShareName}/{filter}` (v5 and 3.1.1): each matching
/// message goes to one member of the share, round robin, preferring connected members with
/// room in their window, then any connected member, then a detached persistent member (whose
/// queue keeps it). Invalid share names get 0x8F (3.1.1: 0x80); No Local on one is a
/// protocol error (v5). Shares get no retained messages.
///
/// **Wills.** `BrokerSession.setWill` after `attach`; `detach(_:publishWill:)` publishes it
/// (after its delay, on the broker's timer), `attach` of the same session cancels a waiting
/// one, `endSession` (and `retainOnly` for the sessions it drops) publish it at once. The
/// will of a persistent session with a delay is also kept in the store (`W` record, one
/// unwaited put per CONNECT with such a will): after a restart it goes when due, and a stop
/// while its connection was up counts as an unclean end (due = restart + delay). Other
/// waiting wills (memory-only broker) are published by `close`.
///
/// **Message expiry.** A message's remaining Message Expiry Interval goes out with it;
/// queued messages whose interval passed are dropped (at the head of the queue, and by a
/// periodic sweep over every queue: `sweepExpired`), also from the store.
///
/// Not here: topic aliases (the front refuses inbound ones and sends none).
public final class Broker: @unchecked Sendable {
    private let lock = NSLock()
    private let store: BrokerStore?
    public let offlineQueueLimit: Int
    private var tree = TopicTree()
    private var sessions: [SessionName: SessionState] = [:]
    private var sequence: UInt64 = 0
    private var attachments: UInt64 = 0
    private var matches: [Match] = []
    private var droppedTotal = 0
    private var closed = false
    private var dirtySessions: [SessionState] = []
    /// The retained message of each topic that has one.
    private var retained: [String: Message] = [:]
    /// Wall clock in µs since the epoch (injectable for tests of Message Expiry).
    let clock: @Sendable () -> Int64
    /// Runs the delayed will messages and the periodic expiry sweep.
    let timers = DispatchQueue(label: "custody.broker.timers")
    private var sweeper: DispatchSourceTimer?
    private var willsPublished = 0
    private var redistributed = 0
    private var serverPublished = 0
    /// Queued messages dropped because their Message Expiry Interval passed, and PUBLISHes not
    /// sent because they exceed a client's Maximum Packet Size, since the broker started.
    private var expiredTotal = 0
    private var discardedTotal = 0

    /// `directory`: where persistent session state lives (created if missing); nil = memory only.
    /// `storeOptions`: the LMDB map size (default 16 GiB of address space; the file grows as it fills).
    /// `clock`: µs since the epoch; `expirySweepInterval`: how often queued messages whose
    /// Message Expiry Interval has passed are dropped from every queue and from the store
    /// (nil: only when they reach the head of a queue, and on `sweepExpired()`).
    public init(
        directory: String?, offlineQueueLimit: Int = 1000, storeOptions: BrokerStoreOptions = BrokerStoreOptions(),
        clock: (@Sendable () -> Int64)? = nil, expirySweepInterval: Duration? = .seconds(60)
    ) throws {
        precondition(offlineQueueLimit >= 1, "the offline queue holds at least one message")
        self.offlineQueueLimit = offlineQueueLimit
        self.clock = clock ?? { wallClock() }
        if let directory {
            store = try BrokerStore(directory: directory, options: storeOptions)
            do {
                try load()
            } catch {
                store?.close()
                throw error
            }
        } else {
            store = nil
        }
        if let expirySweepInterval {
            let interval = DispatchTimeInterval.milliseconds(
                Int(expirySweepInterval.components.seconds * 1000 + expirySweepInterval.components.attoseconds / 1_000_000_000_000_000))
            let timer = DispatchSource.makeTimerSource(queue: timers)
            timer.schedule(deadline: .now() + interval, repeating: interval, leeway: .seconds(1))
            timer.setEventHandler { [weak self] in _ = self?.sweepExpired() }
            timer.resume()
            sweeper = timer
        }
    }

    deinit {
        sweeper?.cancel()
    }

    // MARK: - Sessions

    /// After the ledger granted a CONNECT. `sessionPresent` false => any old state is discarded first.
    /// `persistent` = session expiry interval > 0. Resends in-flight (DUP) and queued messages to `sink`.
    ///
    /// A takeover (the session is still attached to an older connection) moves the session to
    /// this sink; the older `BrokerSession` is then stale: its `handle` throws 0x8E and its
    /// `detach` does nothing.
    public func attach(
        session name: SessionName, persistent: Bool, sessionPresent: Bool,
        protocolVersion: MQTTProtocolVersion, receiveMaximum: Int, sink: BrokerSink
    ) -> BrokerSession {
        attach(
            session: name, persistent: persistent, sessionPresent: sessionPresent, protocolVersion: protocolVersion,
            receiveMaximum: receiveMaximum, maximumPacketSize: nil, sink: sink)
    }

    /// As above, with the client's v5 Maximum Packet Size: a PUBLISH that would be larger is
    /// not sent, and the broker behaves as if its delivery had completed (MQTT-3.1.2-25), so
    /// that it does not hold an in-flight slot forever.
    public func attach(
        session name: SessionName, persistent: Bool, sessionPresent: Bool,
        protocolVersion: MQTTProtocolVersion, receiveMaximum: Int, maximumPacketSize: Int?, sink: BrokerSink
    ) -> BrokerSession {
        locked { attachLocked(name, persistent, sessionPresent, protocolVersion, receiveMaximum, maximumPacketSize, sink) }
    }

    private func attachLocked(
        _ name: SessionName, _ persistent: Bool, _ sessionPresent: Bool,
        _ protocolVersion: MQTTProtocolVersion, _ receiveMaximum: Int, _ maximumPacketSize: Int?, _ sink: BrokerSink
    ) -> BrokerSession {
        var ops: [BrokerStoreOperation] = []
        if let old = sessions[name] {
            // A will waiting for its delay is cancelled by the resumption (MQTT-3.1.3-9) and
            // sent now when the session starts over. The will of a connection taken over is
            // sent unless the session resumes within its delay.
            if let will = old.pendingWill {
                old.pendingWill = nil
                if !sessionPresent { publishWill(will, from: old) }
                forgetStoredWill(old, &ops)
            }
            if old.attachment != 0, let will = old.will {
                old.will = nil
                if !sessionPresent || willDelay(will, old) == 0 { publishWill(will, from: old) }
                forgetStoredWill(old, &ops)
            }
        }
        if !sessionPresent, let old = sessions[name] {
            discard(old, &ops)
            sessions[name] = nil
        }
        let state: SessionState
        if let existing = sessions[name] {
            state = existing
            if state.persistent != persistent { changePersistence(state, to: persistent, &ops) }
        } else {
            state = SessionState(name: name, persistent: persistent)
            sessions[name] = state
        }
        attachments += 1
        state.attachment = attachments
        state.sink = sink
        state.readsServerTopics = false
        // Whatever was decided for the previous connection is moot: in-flight messages go
        // again below, and QoS 0 ones are not owed.
        state.outbox.removeAll()
        state.version = protocolVersion
        state.window = min(max(receiveMaximum, 1), 65535)
        state.maximumPacketSize = maximumPacketSize

        // Redelivery (MQTT-4.4.0-1): unacknowledged PUBLISHes again with DUP, in their
        // original order, and PUBRELs for those the client has PUBREC'd.
        if !state.inflight.isEmpty {
            let now = clock()
            var packets: [MQTTPacket] = []
            for delivery in state.inflight.values.sorted(by: { $0.sequence < $1.sequence }) {
                if delivery.state == .awaitingComp {
                    packets.append(.pubrel(MQTTPublishResponse(packetIdentifier: delivery.packetIdentifier)))
                } else if delivery.durable, let packet = transmit(delivery, state, now: now, &ops) {
                    packets.append(packet)
                }
            }
            post(state, packets)
        }
        pump(state, &ops)
        submit(ops)
        return BrokerSession(name: name, broker: self, state: state, token: state.attachment)
    }

    /// The connection ended without a normal DISCONNECT (lost connection, keep-alive timeout,
    /// protocol error, server shutdown, DISCONNECT 0x04): as `detach(_:publishWill: true)`.
    public func detach(_ session: BrokerSession) {
        locked { detachLocked(session, publishWill: true) }
    }

    /// The connection ended. Non-persistent sessions lose their state; persistent ones start
    /// queueing. `publishWill`: false after a DISCONNECT with reason 0x00 (the will is then
    /// discarded, MQTT-3.1.2-10), true otherwise: the will goes after its delay (see
    /// `BrokerSession.setWill`), on a timer the broker owns.
    public func detach(_ session: BrokerSession, publishWill: Bool) {
        locked { detachLocked(session, publishWill: publishWill) }
    }

    func setWill(_ will: MQTTWill?, sessionExpiryInterval: UInt32?, for session: BrokerSession) {
        locked {
            let state = session.state
            guard state.attachment == session.token else { return }
            state.will = will
            state.willSessionExpiry = sessionExpiryInterval
            var ops: [BrokerStoreOperation] = []
            if let will {
                storeWill(will, state, due: 0, &ops)
            } else {
                forgetStoredWill(state, &ops)
            }
            submit(ops)
        }
    }

    /// A persistent session's will with a delay is kept in the store, so that a restart
    /// (or a crash) neither loses it nor sends it early. Not waited for: it promises nothing.
    private func storeWill(_ will: MQTTWill, _ state: SessionState, due: Int64, _ ops: inout [BrokerStoreOperation]) {
        guard state.persistent, store != nil else { return }
        let delay = willDelay(will, state)
        guard delay > 0, let bytes = BrokerRecords.encodeWill(will, due: due, delay: delay) else {
            forgetStoredWill(state, &ops)
            return
        }
        state.willStored = true
        ops.append(.put(.sessions, key: BrokerRecords.willKey(state.prefix), value: bytes))
    }

    private func forgetStoredWill(_ state: SessionState, _ ops: inout [BrokerStoreOperation]) {
        guard state.willStored else { return }
        state.willStored = false
        ops.append(.delete(.sessions, key: BrokerRecords.willKey(state.prefix)))
    }

    private func detachLocked(_ session: BrokerSession, publishWill: Bool) {
        let state = session.state
        guard state.attachment == session.token else { return }
        state.attachment = 0
        state.sink = nil
        if let will = state.will {
            state.will = nil
            var ops: [BrokerStoreOperation] = []
            let delay = willDelay(will, state)
            if publishWill, delay > 0 {
                storeWill(will, state, due: clock() + Int64(delay) * 1_000_000, &ops)
                schedule(will, state, afterMicroseconds: Int64(delay) * 1_000_000)
            } else {
                if publishWill { self.publishWill(will, from: state) }
                forgetStoredWill(state, &ops)
            }
            submit(ops)
        }
        if !state.persistent {
            var ops: [BrokerStoreOperation] = []
            discard(state, &ops)
            if sessions[state.name] === state { sessions[state.name] = nil }
            submit(ops)
        }
    }

    /// Seconds to wait before a will goes: its Will Delay Interval, at most the session's
    /// expiry (0 for a non-persistent session: it ends with the connection).
    private func willDelay(_ will: MQTTWill, _ state: SessionState) -> UInt32 {
        guard state.persistent else { return 0 }
        let delay = will.properties.willDelayInterval ?? 0
        return min(delay, state.willSessionExpiry ?? delay)
    }

    /// Makes `will` the session's pending will, published by the timer unless cancelled.
    private func schedule(_ will: MQTTWill, _ state: SessionState, afterMicroseconds delay: Int64) {
        state.willGeneration &+= 1
        state.pendingWill = will
        let generation = state.willGeneration
        timers.asyncAfter(deadline: .now() + .microseconds(Int(max(0, delay)))) { [weak self] in
            self?.willDelayEnded(state, generation)
        }
    }

    private func willDelayEnded(_ state: SessionState, _ generation: UInt64) {
        locked {
            guard state.willGeneration == generation, let will = state.pendingWill else { return }
            state.pendingWill = nil
            publishWill(will, from: state)
            var ops: [BrokerStoreOperation] = []
            forgetStoredWill(state, &ops)
            submit(ops)
        }
    }

    /// Publishes a will message as if its client had sent it (under the lock). Its
    /// deliveries to persistent sessions go once durable; nobody waits for the commit.
    /// `publisher`: the will's own session, for No Local.
    private func publishWill(_ will: MQTTWill, from publisher: SessionState) {
        guard TopicRules.isValidTopicName(will.topic) else { return }
        var properties = will.properties
        properties.willDelayInterval = nil
        let publish = MQTTPublish(
            topicName: will.topic, payload: will.payload, qos: will.qos, retain: will.retain,
            packetIdentifier: will.qos == .atMostOnce ? nil : 1, properties: properties)
        var ops: [BrokerStoreOperation] = []
        var pending: [(SessionState, Delivery)] = []
        _ = route(publish, from: publisher, &ops, &pending)
        if will.retain { keepRetained(publish, &ops) }
        willsPublished += 1
        _ = submitWaiting(ops, pending)
    }

    /// Topics under this prefix are the server's own (lifecycle events): no client may
    /// publish there (v5: 0x87; QoS 0 and 3.1.1: dropped), and only sessions allowed by
    /// `BrokerSession.allowServerTopics` may subscribe. Wildcards at the first level never
    /// match them (`$` rule, 4.7.2).
    public static let serverTopicPrefix = "$custody/"

    static func isServerTopic(_ topicOrFilter: String) -> Bool {
        topicOrFilter.utf8.starts(with: serverTopicPrefix.utf8) || topicOrFilter == "$custody"
    }

    /// Publishes one of the server's own messages (not retained), routed like a client's
    /// PUBLISH; deliveries to persistent sessions go once durable, and nobody waits for that.
    /// Calls made one after another are routed (and so delivered to each session) in order.
    public func publishFromServer(topic: String, payload: ByteBuffer, qos: MQTTQoS) {
        guard TopicRules.isValidTopicName(topic) else { return }
        locked {
            guard !closed else { return }
            let publish = MQTTPublish(
                topicName: topic, payload: payload, qos: qos, retain: false,
                packetIdentifier: qos == .atMostOnce ? nil : 1)
            var ops: [BrokerStoreOperation] = []
            var pending: [(SessionState, Delivery)] = []
            _ = route(publish, from: nil, &ops, &pending)
            serverPublished += 1
            _ = submitWaiting(ops, pending)
        }
    }

    /// Whether a server message on `topic` could reach anyone right now: false when no
    /// subscription can match it. Topics beginning with `$` are matched only by filters that
    /// start with the same first level (wildcards at the first level skip them, also in
    /// shares), so for those this is one dictionary look-up at the tree's root.
    /// `publishFromServer` would route such a message to nobody; the caller may skip making
    /// it and count it with `countServerPublished`.
    public func mayDeliverServerTopic(_ topic: String) -> Bool {
        guard topic.utf8.first == UInt8(ascii: "$") else { return true }
        let first = topic.utf8.firstIndex(of: UInt8(ascii: "/")).map { topic[..<$0] } ?? topic[...]
        return locked { !closed && tree.root.children[first] != nil }
    }

    /// Server messages that went to nobody (see `mayDeliverServerTopic`), counted as
    /// `publishFromServer` counts those it routes.
    public func countServerPublished(_ count: Int) {
        locked { if !closed { serverPublished += count } }
    }

    func allowServerTopics(_ allowed: Bool, for session: BrokerSession) {
        locked {
            guard session.state.attachment == session.token else { return }
            session.state.readsServerTopics = allowed
        }
    }

    /// Figures over every session, for metrics (one pass under the lock).
    public struct Totals: Sendable, Equatable {
        public var sessions = 0
        public var attached = 0
        /// Messages waiting in queues (not yet in flight).
        public var queued = 0
        /// Messages sent and not yet acknowledged.
        public var inflight = 0
        public var retained = 0
        /// Since the broker started: dropped from full queues, expired in queues (Message
        /// Expiry), not sent because larger than the client's Maximum Packet Size.
        public var droppedQueueFull = 0
        public var droppedExpired = 0
        public var droppedTooLarge = 0
        public var willsPublished = 0
        public var serverPublished = 0

        public init() {}
    }

    public var totals: Totals {
        locked {
            var totals = Totals()
            totals.sessions = sessions.count
            for state in sessions.values {
                if state.attachment != 0 { totals.attached += 1 }
                totals.queued += state.queue.count
                totals.inflight += state.inflight.count
            }
            totals.retained = retained.count
            totals.droppedQueueFull = droppedTotal
            totals.droppedExpired = expiredTotal
            totals.droppedTooLarge = discardedTotal
            totals.willsPublished = willsPublished
            totals.serverPublished = serverPublished
            return totals
        }
    }

    /// Copies of shared-subscription messages moved to another member because the session
    /// they were chosen for ended first, since the broker started.
    public var redistributedShares: Int { locked { redistributed } }

    /// Will messages published since the broker started.
    public var publishedWills: Int { locked { willsPublished } }

    /// The ledger expired (or clean-started) the session: drop everything, also on disk.
    /// A will still waiting for its delay is published first (the session ended).
    ///
    /// A session that is attached is left alone: the ledger never expires a connected
    /// session, and a clean start is already handled by `attach(sessionPresent: false)`, so
    /// a late call must not wipe the new connection's subscriptions.
    public func endSession(_ name: SessionName) async throws {
        let waiter: CommitWaiter? = locked {
            guard let state = sessions[name], state.attachment == 0 else { return nil }
            if let will = state.pendingWill {
                state.pendingWill = nil
                publishWill(will, from: state)
            }
            var ops: [BrokerStoreOperation] = []
            discard(state, &ops)
            sessions[name] = nil
            return submitWaiting(ops)
        }
        if let waiter { try await waiter.wait().get() }
    }

    /// Drops stored state of every session not in `live` (call at startup after ledger recovery).
    public func retainOnly(live: Set<SessionName>) async throws {
        let waiter: CommitWaiter? = locked {
            var ops: [BrokerStoreOperation] = []
            for (name, state) in sessions where !live.contains(name) && state.attachment == 0 {
                if let will = state.pendingWill {
                    state.pendingWill = nil
                    publishWill(will, from: state)
                }
                discard(state, &ops)
                sessions[name] = nil
            }
            return submitWaiting(ops)
        }
        if let waiter { try await waiter.wait().get() }
    }

    /// Stops the store's writer after the writes already queued; later writes fail.
    ///
    /// Wills still waiting for their delay that are not in the store are published first
    /// (server shutdown ends the connection); stored ones wait for their delay after the restart.
    public func close() {
        sweeper?.cancel()
        locked {
            for state in sessions.values where !state.willStored {
                guard let will = state.pendingWill else { continue }
                state.pendingWill = nil
                publishWill(will, from: state)
            }
            closed = true
        }
        store?.close()
    }

    /// Names of the sessions the broker holds state for (attached or not).
    /// Whether the broker keeps any state for `name` (attached or not): when it does not,
    /// `endSession(name)` has nothing to do.
    /// Whether state for `name` is kept with no connection attached (what `endSession` drops).
    public func hasDetachedSession(_ name: SessionName) -> Bool {
        locked { sessions[name].map { $0.attachment == 0 } ?? false }
    }

    public var sessionNames: Set<SessionName> {
        locked { Set(sessions.keys) }
    }

    public func info(_ name: SessionName) -> BrokerSessionInfo? {
        locked {
            guard let state = sessions[name] else { return nil }
            return BrokerSessionInfo(
                attached: state.attachment != 0, persistent: state.persistent,
                subscriptions: state.subscriptions.keys.sorted(), queued: state.queue.count,
                inflight: state.inflight.count, dropped: state.dropped,
                inboundAwaitingRelease: state.inboundQoS2.count, discardedTooLarge: state.discarded,
                expired: state.expired, willPending: state.pendingWill != nil)
        }
    }

    /// Drops every queued message whose Message Expiry Interval has passed (in memory and in
    /// the store: MQTT-3.3.2-5), and expired retained messages. Returns how many queued
    /// messages went. Messages in flight are not touched: their delivery has begun.
    @discardableResult
    public func sweepExpired() -> Int {
        locked {
            let now = clock()
            var ops: [BrokerStoreOperation] = []
            var count = 0
            // Only queues that took a message with an expiry since they were last found clean.
            for state in sessions.values where state.queueMayExpire {
                guard state.queue.contains(where: { isExpired($0, now: now) }) else { continue }
                var mayExpire = false
                var kept = DeliveryQueue(initialCapacity: state.queue.count)
                for delivery in state.queue {
                    if isExpired(delivery, now: now) {
                        release(delivery, state, &ops, deleteRecord: true)
                        state.expired += 1
                        expiredTotal += 1
                        count += 1
                    } else {
                        if delivery.message.expiresAt != nil { mayExpire = true }
                        kept.append(delivery)
                    }
                }
                state.queue = kept
                state.queueMayExpire = mayExpire
            }
            for (topic, message) in retained where isExpired(message, now: now) {
                retained[topic] = nil
                if store != nil { ops.append(.delete(.retained, key: Array(topic.utf8))) }
            }
            submit(ops)
            return count
        }
    }

    /// Messages dropped from full queues since the broker started.
    public var droppedMessages: Int { locked { droppedTotal } }

    // MARK: - Packets from a client

    func handle(_ packet: MQTTPacket, from session: BrokerSession) async throws(BrokerError) -> [MQTTPacket] {
        switch packet {
        case .publish(let publish):
            return try await handlePublish(publish, from: session)
        case .pubrel(let response):
            return try await handlePubrel(response.packetIdentifier, from: session)
        case .puback(let response):
            return try acknowledge(response, .awaitingAck, from: session)
        case .pubrec(let response):
            return try acknowledge(response, .awaitingRec, from: session)
        case .pubcomp(let response):
            return try acknowledge(response, .awaitingComp, from: session)
        case .subscribe(let subscribe):
            return try await handleSubscribe(subscribe, from: session)
        case .unsubscribe(let unsubscribe):
            return try await handleUnsubscribe(unsubscribe, from: session)
        default:
            throw BrokerError(.protocolError, "\(packet.type) is not for the broker")
        }
    }

    private func handlePublish(_ publish: MQTTPublish, from session: BrokerSession) async throws(BrokerError)
        -> [MQTTPacket]
    {
        guard TopicRules.isValidTopicName(publish.topicName) else {
            throw BrokerError(.topicNameInvalid, "PUBLISH topic name '\(publish.topicName)' is not valid here")
        }
        if Self.isServerTopic(publish.topicName) {
            // The server's own topics: refused, not routed (v5 says so; 3.1.1 cannot).
            let id = publish.packetIdentifier ?? 0
            let code: MQTTReasonCode = session.state.version == .mqtt5 ? .notAuthorized : .success
            switch publish.qos {
            case .atMostOnce: return []
            case .atLeastOnce: return [.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: code))]
            case .exactlyOnce: return [.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: code))]
            }
        }
        if publish.qos != .atMostOnce, publish.packetIdentifier == nil || publish.packetIdentifier == 0 {
            throw BrokerError(.protocolError, "PUBLISH QoS \(publish.qos.rawValue) without packet identifier")
        }
        let state = session.state
        if publish.properties.payloadFormatIndicator == .utf8, !Self.isValidUTF8(publish.payload) {
            // Refused, not routed (MQTT 5.0 section 3.3.2.3.2); QoS 0 has nothing to answer with.
            let id = publish.packetIdentifier ?? 0
            switch publish.qos {
            case .atMostOnce:
                throw BrokerError(.payloadFormatInvalid, "PUBLISH to '\(publish.topicName)' marked UTF-8 is not UTF-8")
            case .atLeastOnce:
                return [.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: .payloadFormatInvalid))]
            case .exactlyOnce:
                return [.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: .payloadFormatInvalid))]
            }
        }
        let (answer, waiter): (MQTTPacket?, CommitWaiter?) = try locked { () throws(BrokerError) in
            try check(session)
            var ops: [BrokerStoreOperation] = []
            var pending: [(SessionState, Delivery)] = []
            let id = publish.packetIdentifier ?? 0
            let v5 = state.version == .mqtt5
            switch publish.qos {
            case .atMostOnce:
                _ = route(publish, from: state, &ops, &pending)
                if publish.retain { keepRetained(publish, &ops) }
                return (nil, submitWaiting(ops, pending))
            case .atLeastOnce:
                let matched = route(publish, from: state, &ops, &pending)
                if publish.retain { keepRetained(publish, &ops) }
                let code: MQTTReasonCode = v5 && matched == 0 ? .noMatchingSubscribers : .success
                return (.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: code)),
                        submitWaiting(ops, pending))
            case .exactlyOnce:
                // Seen before PUBREL: the client resends; it was delivered already (4.3.3).
                if state.inboundQoS2.contains(id) {
                    return (.pubrec(MQTTPublishResponse(packetIdentifier: id)), state.inboundCommits[id])
                }
                state.inboundQoS2.insert(id)
                if state.persistent, store != nil {
                    ops.append(.put(.sessions, key: BrokerRecords.inboundKey(state.prefix, id), value: []))
                }
                let matched = route(publish, from: state, &ops, &pending)
                if publish.retain { keepRetained(publish, &ops) }
                let code: MQTTReasonCode = v5 && matched == 0 ? .noMatchingSubscribers : .success
                let waiter = submitWaiting(ops, pending)
                if let waiter { state.inboundCommits[id] = waiter }
                return (.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: code)), waiter)
            }
        }
        if let waiter {
            let result = await waiter.wait()
            if publish.qos == .exactlyOnce, let id = publish.packetIdentifier {
                locked {
                    guard state.inboundCommits[id] === waiter else { return }
                    state.inboundCommits[id] = nil
                    // Not promised: let the client's resend be delivered, rather than lost.
                    if case .failure = result { state.inboundQoS2.remove(id) }
                }
            }
            if case .failure(let error) = result { throw .storage(error) }
        }
        return answer.map { [$0] } ?? []
    }

    private func handlePubrel(_ id: UInt16, from session: BrokerSession) async throws(BrokerError) -> [MQTTPacket] {
        let state = session.state
        let (known, waiter) = try locked { () throws(BrokerError) -> (Bool, CommitWaiter?) in
            try check(session)
            guard state.inboundQoS2.remove(id) != nil else { return (false, nil) }
            guard state.persistent, store != nil else { return (true, nil) }
            // Waited for: after PUBCOMP the client may reuse the identifier, which a stale
            // record would make look like a duplicate after a restart.
            return (true, submitWaiting([.delete(.sessions, key: BrokerRecords.inboundKey(state.prefix, id))]))
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
        let code: MQTTReasonCode = known || state.version != .mqtt5 ? .success : .packetIdentifierNotFound
        return [.pubcomp(MQTTPublishResponse(packetIdentifier: id, reasonCode: code))]
    }

    /// PUBACK, PUBREC and PUBCOMP for messages the broker sent. Nothing to wait for: the
    /// client already has the message, and losing the deletion only means a resend.
    private func acknowledge(
        _ response: MQTTPublishResponse, _ expected: DeliveryState, from session: BrokerSession
    ) throws(BrokerError) -> [MQTTPacket] {
        let state = session.state
        return try locked { () throws(BrokerError) -> [MQTTPacket] in
            try check(session)
            let id = response.packetIdentifier
            var ops: [BrokerStoreOperation] = []
            defer { submit(ops) }
            guard let delivery = state.inflight[id] else {
                // PUBREC for an unknown identifier still gets its PUBREL (v5: 0x92);
                // stray PUBACKs and PUBCOMPs are ignored.
                if expected == .awaitingRec {
                    let code: MQTTReasonCode = state.version == .mqtt5 ? .packetIdentifierNotFound : .success
                    return [.pubrel(MQTTPublishResponse(packetIdentifier: id, reasonCode: code))]
                }
                return []
            }
            switch (expected, delivery.state) {
            case (.awaitingAck, .awaitingAck), (.awaitingComp, .awaitingComp):
                finish(delivery, state, &ops)
                return []
            case (.awaitingRec, .awaitingRec):
                if response.reasonCode.isFailure {
                    // The receiver refused it: the flow ends here, without PUBREL (4.3.3).
                    finish(delivery, state, &ops)
                    return []
                }
                delivery.state = .awaitingComp
                if delivery.stored { ops.append(putRecord(delivery, state)) }
                return [.pubrel(MQTTPublishResponse(packetIdentifier: id))]
            case (.awaitingRec, .awaitingComp):
                return [.pubrel(MQTTPublishResponse(packetIdentifier: id))]
            default:
                throw BrokerError(
                    .protocolError,
                    "\(expected == .awaitingAck ? "PUBACK" : expected == .awaitingRec ? "PUBREC" : "PUBCOMP") "
                        + "for packet identifier \(id), which is in another QoS flow")
            }
        }
    }

    private func handleSubscribe(_ subscribe: MQTTSubscribe, from session: BrokerSession) async throws(BrokerError)
        -> [MQTTPacket]
    {
        let state = session.state
        var retainedPackets: [MQTTPacket] = []
        var retainedPending: [Delivery] = []
        let (codes, waiter) = try locked { () throws(BrokerError) -> ([MQTTReasonCode], CommitWaiter?) in
            try check(session)
            let v5 = state.version == .mqtt5
            if v5, let bad = subscribe.subscriptions.first(where: {
                $0.options.noLocal && TopicRules.splitShare($0.topicFilter) != nil
            }) {
                throw BrokerError(.protocolError, "No Local on the shared subscription '\(bad.topicFilter)' (MQTT-3.8.3-4)")
            }
            let identifier = v5 ? subscribe.properties.subscriptionIdentifiers.first : nil
            var ops: [BrokerStoreOperation] = []
            var codes: [MQTTReasonCode] = []
            codes.reserveCapacity(subscribe.subscriptions.count)
            for subscription in subscribe.subscriptions {
                let filter = subscription.topicFilter
                if TopicRules.checkFilter(filter) != nil {
                    codes.append(v5 ? .topicFilterInvalid : .unspecifiedError)
                    continue
                }
                if !state.readsServerTopics, Self.isServerTopic(TopicRules.splitShare(filter).map { String($0.filter) } ?? filter) {
                    codes.append(v5 ? .notAuthorized : .unspecifiedError)
                    continue
                }
                let shared = TopicRules.splitShare(filter) != nil
                var options = subscription.options
                if !v5 { options = MQTTSubscriptionOptions(qos: options.qos) }
                let subscriber = Subscriber(session: state, options: options, identifier: identifier)
                let existed = state.subscriptions.updateValue(subscriber, forKey: filter) != nil
                tree.insert(filter, subscriber)
                if state.persistent, store != nil {
                    ops.append(.put(
                        .sessions, key: BrokerRecords.subscriptionKey(state.prefix, filter),
                        value: BrokerRecords.encodeSubscription(options, identifier)))
                }
                codes.append(MQTTReasonCode(rawValue: options.qos.rawValue))
                // Shared subscriptions get no retained messages (MQTT 5.0 section 4.8.2).
                let sendRetained = switch options.retainHandling {
                case .sendOnSubscribe: !shared
                case .sendOnNewSubscribe: !shared && !existed
                case .doNotSend: false
                }
                if sendRetained, !retained.isEmpty {
                    sendRetainedMessages(
                        filter, subscriber, state, &ops, &retainedPackets, &retainedPending)
                }
            }
            return (codes, submitWaiting(ops))
        }
        if let waiter {
            let result = await waiter.wait()
            if !retainedPending.isEmpty {
                // Stored now (or never): send what is in flight, after the SUBACK.
                let sendable = result.isSuccess
                locked {
                    let now = clock()
                    var ops: [BrokerStoreOperation] = []
                    for delivery in retainedPending {
                        delivery.durable = true
                        guard sendable, delivery.state != .queued, !delivery.sent, state.sink != nil,
                            state.inflight[delivery.packetIdentifier] === delivery
                        else { continue }
                        guard let packet = transmit(delivery, state, now: now, &ops) else { continue }
                        // Taken over meanwhile: the new connection gets it through its sink.
                        if state.attachment == session.token { retainedPackets.append(packet) } else { post(state, packet) }
                    }
                    pump(state, &ops)
                    submit(ops)
                }
            }
            if case .failure(let error) = result { throw .storage(error) }
        }
        return [.suback(MQTTSubAck(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes))]
            + retainedPackets
    }

    /// Replaces (or, with an empty payload, deletes) the retained message of a topic.
    private func keepRetained(_ publish: MQTTPublish, _ ops: inout [BrokerStoreOperation]) {
        let topic = publish.topicName
        if publish.payload.readableBytes == 0 {
            if retained.removeValue(forKey: topic) != nil, store != nil {
                ops.append(.delete(.retained, key: Array(topic.utf8)))
            }
            return
        }
        var kept = publish
        clean(&kept.properties)
        kept.packetIdentifier = nil
        kept.duplicate = false
        kept.retain = true
        let now = clock()
        kept.payload = Message.compacted(kept.payload)
        retained[topic] = Message(publish: kept, receivedAt: now)
        if store != nil, let bytes = BrokerRecords.encodeMessage(kept, receivedAt: now) {
            ops.append(.put(.retained, key: Array(topic.utf8), value: bytes))
        }
    }

    /// Queues the retained messages matching a new subscription. Those that can go at once
    /// are appended to `packets` (the caller returns them after the SUBACK); those of a
    /// persistent session go once their store write is committed (`pending`).
    private func sendRetainedMessages(
        _ filter: String, _ subscriber: Subscriber, _ session: SessionState, _ ops: inout [BrokerStoreOperation],
        _ packets: inout [MQTTPacket], _ pending: inout [Delivery]
    ) {
        let now = clock()
        let identifiers = subscriber.identifier.map { [$0] } ?? []
        let wildcard = filter.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
        let matching: [(key: String, value: Message)] = wildcard
            ? retained.filter { TopicRules.matches(filter: filter, topic: $0.key) }
                .sorted { $0.value.receivedAt < $1.value.receivedAt }
            : retained[filter].map { [(key: filter, value: $0)] } ?? []
        for (topic, message) in matching {
            if isExpired(message, now: now) {
                retained[topic] = nil
                if store != nil { ops.append(.delete(.retained, key: Array(topic.utf8))) }
                continue
            }
            let qos = min(message.publish.qos, subscriber.options.qos)
            sequence += 1
            let delivery = Delivery(sequence: sequence, message: message, qos: qos, retain: true, identifiers: identifiers)
            if qos == .atMostOnce {
                if let packet = transmit(delivery, session, now: now, &ops) { packets.append(packet) }
                continue
            }
            if session.persistent, store != nil {
                if message.storeKey == 0, let bytes = BrokerRecords.encodeMessage(message.publish, receivedAt: message.receivedAt) {
                    sequence += 1
                    message.storeKey = sequence
                    ops.append(.put(.messages, key: BrokerRecords.messageKey(sequence), value: bytes))
                }
                if message.storeKey != 0 {
                    message.references += 1
                    delivery.stored = true
                    delivery.durable = false
                    pending.append(delivery)
                }
            }
            enqueue(delivery, session, &ops, into: &packets)
        }
    }

    private func handleUnsubscribe(_ unsubscribe: MQTTUnsubscribe, from session: BrokerSession)
        async throws(BrokerError) -> [MQTTPacket]
    {
        let state = session.state
        let (codes, waiter) = try locked { () throws(BrokerError) -> ([MQTTReasonCode], CommitWaiter?) in
            try check(session)
            var ops: [BrokerStoreOperation] = []
            var codes: [MQTTReasonCode] = []
            for filter in unsubscribe.topicFilters {
                if TopicRules.checkFilter(filter) != nil {
                    codes.append(.topicFilterInvalid)
                    continue
                }
                guard state.subscriptions.removeValue(forKey: filter) != nil else {
                    codes.append(.noSubscriptionExisted)
                    continue
                }
                tree.remove(filter, session: state)
                if state.persistent, store != nil {
                    ops.append(.delete(.sessions, key: BrokerRecords.subscriptionKey(state.prefix, filter)))
                }
                codes.append(.success)
            }
            return (codes, submitWaiting(ops))
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
        let v5 = state.version == .mqtt5
        return [.unsuback(MQTTUnsubAck(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: v5 ? codes : []))]
    }

    /// Well-formed UTF-8 (no overlong forms, no surrogates), as Payload Format Indicator 1 promises.
    static func isValidUTF8(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            var iterator = bytes.makeIterator()
            var decoder = UTF8()
            while true {
                switch decoder.decode(&iterator) {
                case .scalarValue: continue
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
    }

    // MARK: - Routing (under the lock)

    private func check(_ session: BrokerSession) throws(BrokerError) {
        guard session.state.attachment == session.token else {
            throw BrokerError(.sessionTakenOver, "session \(session.name) is no longer attached to this connection")
        }
    }

    /// Delivers or queues `publish` for every matching session; returns how many matched.
    /// Deliveries that must become durable first are appended to `pending` and go out when
    /// their commit completes.
    private func route(
        _ publish: MQTTPublish, from publisher: SessionState?,
        _ ops: inout [BrokerStoreOperation], _ pending: inout [(SessionState, Delivery)]
    ) -> Int {
        tree.match(publish.topicName, publisher: publisher, into: &matches)
        defer { matches.removeAll(keepingCapacity: true) }
        guard !matches.isEmpty else { return 0 }
        var message: Message?
        var encoded: [UInt8]??
        let now = clock()
        // What every copy starts from: no Topic Alias, no identifiers, no DUP.
        var direct: [MQTTPacket] = []
        var base = publish
        clean(&base.properties)
        base.packetIdentifier = nil
        base.duplicate = false
        for match in matches {
            let session = match.session
            let qos = min(publish.qos, match.qos)
            let retain = publish.retain && match.retainAsPublished
            if qos == .atMostOnce {
                // Not queued for detached sessions (optional in 4.6; Mosquitto does not either).
                guard session.sink != nil else { continue }
                var packet = base
                packet.qos = .atMostOnce
                packet.retain = retain
                if session.version == .mqtt5, !match.identifiers.isEmpty {
                    packet.properties.subscriptionIdentifiers = match.identifiers
                }
                if let maximum = session.maximumPacketSize,
                    (try? MQTTEncoder(protocolVersion: session.version).encodedSize(of: .publish(packet))) ?? Int.max > maximum
                {
                    session.discarded += 1
                    discardedTotal += 1
                    continue
                }
                post(session, .publish(packet))
                continue
            }
            if session.sink == nil && !session.persistent { continue }
            let shared: Message
            if let message {
                shared = message
            } else {
                var held = base
                held.payload = Message.compacted(held.payload)
                shared = Message(publish: held, receivedAt: now)
                message = shared
            }
            sequence += 1
            let delivery = Delivery(
                sequence: sequence, message: shared, qos: qos, retain: retain,
                identifiers: match.identifiers, share: match.share?.key)
            if session.persistent, store != nil {
                if shared.storeKey == 0 {
                    if encoded == nil { encoded = BrokerRecords.encodeMessage(shared.publish, receivedAt: now) }
                    if let bytes = encoded! {
                        sequence += 1
                        shared.storeKey = sequence
                        ops.append(.put(.messages, key: BrokerRecords.messageKey(sequence), value: bytes))
                    }
                }
                if shared.storeKey != 0 {
                    shared.references += 1
                    delivery.stored = true
                    delivery.durable = false
                    pending.append((session, delivery))
                }
            }
            enqueue(delivery, session, &ops, into: &direct)
            if !direct.isEmpty {
                for packet in direct { post(session, packet) }
                direct.removeAll(keepingCapacity: true)
            }
        }
        return matches.count
    }

    private func clean(_ properties: inout MQTTProperties) {
        guard !properties.isEmpty else { return }
        properties.topicAlias = nil
        if properties.contains(where: { if case .subscriptionIdentifier = $0 { true } else { false } }) {
            properties.subscriptionIdentifiers = []
        }
    }

    /// Puts a delivery in flight (its PUBLISH appended to `packets` when it may go now) or
    /// in the queue.
    private func enqueue(
        _ delivery: Delivery, _ session: SessionState, _ ops: inout [BrokerStoreOperation],
        into packets: inout [MQTTPacket]
    ) {
        if session.sink != nil, session.queue.isEmpty, session.inflight.count < session.window {
            assignIdentifier(delivery, session)
            if delivery.stored { ops.append(putRecord(delivery, session)) }
            if delivery.durable, let packet = transmit(delivery, session, now: clock(), &ops) {
                packets.append(packet)
            }
            return
        }
        if session.queue.count >= offlineQueueLimit {
            let oldest = session.queue.removeFirst()
            release(oldest, session, &ops, deleteRecord: true)
            session.dropped += 1
            droppedTotal += 1
        }
        session.queue.append(delivery)
        if delivery.message.expiresAt != nil { session.queueMayExpire = true }
        if delivery.stored { ops.append(putRecord(delivery, session)) }
    }

    private func assignIdentifier(_ delivery: Delivery, _ session: SessionState) {
        var id = session.nextPacketIdentifier
        while session.inflight[id] != nil { id = id == .max ? 1 : id + 1 }
        session.nextPacketIdentifier = id == .max ? 1 : id + 1
        delivery.packetIdentifier = id
        delivery.state = delivery.qos == .atLeastOnce ? .awaitingAck : .awaitingRec
        session.inflight[id] = delivery
    }

    /// Fills the in-flight window from the queue and sends what is durable.
    private func pump(_ session: SessionState, _ ops: inout [BrokerStoreOperation]) {
        guard session.sink != nil, !session.queue.isEmpty else { return }
        var packets: [MQTTPacket] = []
        let now = clock()
        while session.inflight.count < session.window, let delivery = session.queue.first {
            session.queue.removeFirst()
            if isExpired(delivery, now: now) {
                release(delivery, session, &ops, deleteRecord: true)
                session.expired += 1
                expiredTotal += 1
                continue
            }
            assignIdentifier(delivery, session)
            if delivery.stored { ops.append(putRecord(delivery, session)) }
            if delivery.durable, let packet = transmit(delivery, session, now: now, &ops) {
                packets.append(packet)
            }
        }
        post(session, packets)
    }

    /// The end of a delivery's flow: out of the window, off the disk, next one in.
    private func finish(_ delivery: Delivery, _ session: SessionState, _ ops: inout [BrokerStoreOperation]) {
        session.inflight[delivery.packetIdentifier] = nil
        release(delivery, session, &ops, deleteRecord: true)
        pump(session, &ops)
    }

    private func release(
        _ delivery: Delivery, _ session: SessionState, _ ops: inout [BrokerStoreOperation], deleteRecord: Bool
    ) {
        guard delivery.stored else { return }
        delivery.stored = false
        if deleteRecord {
            ops.append(.delete(.sessions, key: BrokerRecords.deliveryKey(session.prefix, delivery.sequence)))
        }
        let message = delivery.message
        message.references -= 1
        if message.references == 0, message.storeKey != 0 {
            ops.append(.delete(.messages, key: BrokerRecords.messageKey(message.storeKey)))
            message.storeKey = 0
        }
    }

    private func putRecord(_ delivery: Delivery, _ session: SessionState) -> BrokerStoreOperation {
        .put(.sessions, key: BrokerRecords.deliveryKey(session.prefix, delivery.sequence),
             value: BrokerRecords.encodeDelivery(delivery))
    }

    private func isExpired(_ delivery: Delivery, now: Int64) -> Bool {
        isExpired(delivery.message, now: now)
    }

    private func isExpired(_ message: Message, now: Int64) -> Bool {
        guard let expiresAt = message.expiresAt else { return false }
        return now >= expiresAt
    }

    private func outbound(_ delivery: Delivery, _ session: SessionState, now: Int64) -> MQTTPublish {
        var packet = delivery.message.publish
        packet.qos = delivery.qos
        packet.packetIdentifier = delivery.qos == .atMostOnce ? nil : delivery.packetIdentifier
        packet.duplicate = delivery.sent
        packet.retain = delivery.retain
        if session.version == .mqtt5 {
            if !delivery.identifiers.isEmpty { packet.properties.subscriptionIdentifiers = delivery.identifiers }
            if let interval = packet.properties.messageExpiryInterval {
                let waited = max(0, (now - delivery.message.receivedAt) / 1_000_000)
                packet.properties.messageExpiryInterval = UInt32(max(0, Int64(interval) - waited))
            }
        }
        return packet
    }

    /// Forgets a session's state, in memory and (through `ops`) on disk.
    private func discard(_ state: SessionState, _ ops: inout [BrokerStoreOperation]) {
        for filter in state.subscriptions.keys { tree.remove(filter, session: state) }
        redistributeShares(of: state)
        for delivery in state.inflight.values { release(delivery, state, &ops, deleteRecord: false) }
        for delivery in state.queue { release(delivery, state, &ops, deleteRecord: false) }
        if state.persistent, store != nil { ops.append(.deletePrefix(.sessions, prefix: state.prefix)) }
        state.subscriptions = [:]
        state.inflight = [:]
        state.queue.removeAll()
        state.inboundQoS2 = []
        state.inboundCommits = [:]
        state.attachment = 0
        state.sink = nil
        state.willStored = false
        state.pendingWill = nil
    }

    /// A session ends with copies it was chosen for by a shared subscription that its client
    /// does not have yet (queued, or sent and not acknowledged; not those already PUBREC'd):
    /// each goes to another member of that share, if there is one (MQTT 5.0 section 4.8.2).
    /// Called after the session's subscriptions left the tree.
    private func redistributeShares(of state: SessionState) {
        guard !tree.groups.isEmpty else { return }
        let candidates = (state.inflight.values.filter { $0.state != .awaitingComp } + Array(state.queue))
            .filter { $0.share != nil }
            .sorted { $0.sequence < $1.sequence }
        guard !candidates.isEmpty else { return }
        var ops: [BrokerStoreOperation] = []
        var pending: [(SessionState, Delivery)] = []
        var direct: [MQTTPacket] = []
        for old in candidates {
            guard let key = old.share, let group = tree.groups[key], let member = group.pick() else { continue }
            let session = member.session
            let message = old.message
            sequence += 1
            let delivery = Delivery(
                sequence: sequence, message: message, qos: min(message.publish.qos, member.options.qos),
                retain: message.publish.retain && member.options.retainAsPublished,
                identifiers: member.identifier.map { [$0] } ?? [], share: key)
            if delivery.qos == .atMostOnce {
                guard session.sink != nil else { continue }
                if let packet = transmit(delivery, session, now: clock(), &ops) { post(session, packet) }
                continue
            }
            if session.persistent, store != nil {
                if message.storeKey == 0,
                    let bytes = BrokerRecords.encodeMessage(message.publish, receivedAt: message.receivedAt)
                {
                    sequence += 1
                    message.storeKey = sequence
                    ops.append(.put(.messages, key: BrokerRecords.messageKey(sequence), value: bytes))
                }
                if message.storeKey != 0 {
                    message.references += 1
                    delivery.stored = true
                    delivery.durable = false
                    pending.append((session, delivery))
                }
            }
            enqueue(delivery, session, &ops, into: &direct)
            if !direct.isEmpty {
                for packet in direct { post(session, packet) }
                direct.removeAll(keepingCapacity: true)
            }
            redistributed += 1
        }
        _ = submitWaiting(ops, pending)
    }

    /// A session resumed with another expiry: a persistent one that becomes non-persistent
    /// leaves the disk; the other way round everything it holds is written.
    private func changePersistence(_ state: SessionState, to persistent: Bool, _ ops: inout [BrokerStoreOperation]) {
        state.persistent = persistent
        guard store != nil else { return }
        let deliveries = Array(state.inflight.values) + Array(state.queue)
        if !persistent {
            for delivery in deliveries {
                release(delivery, state, &ops, deleteRecord: false)
                delivery.durable = true
            }
            ops.append(.deletePrefix(.sessions, prefix: state.prefix))
            state.willStored = false
            return
        }
        for (filter, subscriber) in state.subscriptions {
            ops.append(.put(
                .sessions, key: BrokerRecords.subscriptionKey(state.prefix, filter),
                value: BrokerRecords.encodeSubscription(subscriber.options, subscriber.identifier)))
        }
        for id in state.inboundQoS2 {
            ops.append(.put(.sessions, key: BrokerRecords.inboundKey(state.prefix, id), value: []))
        }
        for delivery in deliveries.sorted(by: { $0.sequence < $1.sequence }) {
            let message = delivery.message
            if message.storeKey == 0 {
                guard let bytes = BrokerRecords.encodeMessage(message.publish, receivedAt: message.receivedAt) else {
                    continue
                }
                sequence += 1
                message.storeKey = sequence
                ops.append(.put(.messages, key: BrokerRecords.messageKey(sequence), value: bytes))
            }
            message.references += 1
            delivery.stored = true
            ops.append(putRecord(delivery, state))
        }
    }

    // MARK: - Store plumbing

    private func submit(_ ops: [BrokerStoreOperation]) {
        guard let store, !ops.isEmpty, !closed else { return }
        store.submit(ops)
    }

    /// Submits `ops` (under the lock, so the store sees them in the broker's order) and
    /// returns what to wait on; nil when there is nothing to write. `pending` deliveries are
    /// sent once the commit is known (also when it failed: the message is then held in
    /// memory only, and the publisher, which gets no acknowledgement, will send it again).
    private func submitWaiting(_ ops: [BrokerStoreOperation], _ pending: [(SessionState, Delivery)] = []) -> CommitWaiter? {
        guard let store, !ops.isEmpty else { return nil }
        let waiter = CommitWaiter()
        guard !closed else {
            release(pending)
            waiter.complete(.failure(.closed))
            return waiter
        }
        store.submit(ops) { [self] result in
            if !pending.isEmpty { locked { release(pending) } }
            waiter.complete(result)
        }
        return waiter
    }

    private func release(_ pending: [(SessionState, Delivery)]) {
        let now = clock()
        var ops: [BrokerStoreOperation] = []
        for (session, delivery) in pending {
            delivery.durable = true
            guard delivery.state != .queued, !delivery.sent, session.sink != nil,
                session.inflight[delivery.packetIdentifier] === delivery
            else { continue }
            if let packet = transmit(delivery, session, now: now, &ops) {
                post(session, packet)
            } else {
                pump(session, &ops)
            }
        }
        submit(ops)
    }

    /// The PUBLISH for an in-flight delivery, marked sent; nil when it exceeds the client's
    /// Maximum Packet Size, in which case the delivery is over (and its slot free).
    private func transmit(
        _ delivery: Delivery, _ session: SessionState, now: Int64, _ ops: inout [BrokerStoreOperation]
    ) -> MQTTPacket? {
        let packet = MQTTPacket.publish(outbound(delivery, session, now: now))
        if let maximum = session.maximumPacketSize {
            let size = (try? MQTTEncoder(protocolVersion: session.version).encodedSize(of: packet)) ?? Int.max
            if size > maximum {
                session.inflight[delivery.packetIdentifier] = nil
                release(delivery, session, &ops, deleteRecord: true)
                session.discarded += 1
                discardedTotal += 1
                return nil
            }
        }
        delivery.sent = true
        return packet
    }

    /// Runs `body` under the lock, then sends what it posted.
    private func locked<R>(_ body: () throws(BrokerError) -> R) throws(BrokerError) -> R {
        lock.lock()
        let result: R
        do {
            result = try body()
        } catch {
            let dirty = takeDirty()
            lock.unlock()
            for session in dirty { drain(session) }
            throw error
        }
        let dirty = takeDirty()
        lock.unlock()
        for session in dirty { drain(session) }
        return result
    }

    private func locked<R>(_ body: () -> R) -> R {
        lock.lock()
        let result = body()
        let dirty = takeDirty()
        lock.unlock()
        for session in dirty { drain(session) }
        return result
    }

    /// Queues packets for a session's sink (under the lock). They are sent when the lock is
    /// released, by `drain`, so that a sink may call back into the broker (a failed write
    /// that closes the channel and detaches, say) without deadlocking.
    private func post(_ session: SessionState, _ packets: [MQTTPacket]) {
        guard !packets.isEmpty else { return }
        session.outbox.append(contentsOf: packets)
        if !session.dirty {
            session.dirty = true
            dirtySessions.append(session)
        }
    }

    private func post(_ session: SessionState, _ packet: MQTTPacket) {
        session.outbox.append(packet)
        if !session.dirty {
            session.dirty = true
            dirtySessions.append(session)
        }
    }

    private func takeDirty() -> [SessionState] {
        guard !dirtySessions.isEmpty else { return [] }
        let dirty = dirtySessions
        dirtySessions.removeAll(keepingCapacity: true)
        for session in dirty { session.dirty = false }
        return dirty
    }

    /// Sends a session's outbox outside the lock. One thread at a time drains a session, and
    /// it sends batches in the order they were posted: packets reach the sink in the order
    /// the broker decided them, whichever threads decided them.
    private func drain(_ session: SessionState) {
        lock.lock()
        guard !session.draining else {
            lock.unlock()
            return
        }
        session.draining = true
        while true {
            guard !session.outbox.isEmpty, let sink = session.sink else {
                session.outbox.removeAll()
                session.draining = false
                lock.unlock()
                return
            }
            let packets = session.outbox
            session.outbox = []
            lock.unlock()
            sink.send(packets)
            lock.lock()
        }
    }

    // MARK: - Loading

    private func load() throws {
        guard let store else { return }
        var messages: [UInt64: Message] = [:]
        var cleanup: [BrokerStoreOperation] = []
        var highest: UInt64 = 0
        var loadedWills: [(SessionState, MQTTWill, Int64)] = []
        let now = clock()
        try store.forEach(.messages) { key, value in
            guard key.count == 8, let (publish, receivedAt) = BrokerRecords.decodeMessage(value) else {
                cleanup.append(.delete(.messages, key: Array(key)))
                return
            }
            let storeKey = UInt64(bigEndian: key.loadUnaligned(as: UInt64.self))
            let message = Message(publish: publish, receivedAt: receivedAt)
            message.storeKey = storeKey
            messages[storeKey] = message
            highest = max(highest, storeKey)
        }
        try store.forEach(.retained) { key, value in
            guard let (publish, receivedAt) = BrokerRecords.decodeMessage(value) else {
                cleanup.append(.delete(.retained, key: Array(key)))
                return
            }
            var kept = publish
            kept.retain = true
            retained[String(decoding: key, as: UTF8.self)] = Message(publish: kept, receivedAt: receivedAt)
        }
        try store.forEach(.sessions) { key, value in
            guard let separator = key.firstIndex(of: 0), separator + 1 < key.count else {
                cleanup.append(.delete(.sessions, key: Array(key)))
                return
            }
            let name = SessionName(unchecked: String(decoding: key[..<separator], as: UTF8.self))
            let kind = key[separator + 1]
            let suffix = UnsafeRawBufferPointer(rebasing: key[(separator + 2)...])
            let state: SessionState
            if let existing = sessions[name] {
                state = existing
            } else {
                state = SessionState(name: name, persistent: true)
                sessions[name] = state
            }
            switch kind {
            case BrokerRecords.subscriptionKind:
                let filter = String(decoding: suffix, as: UTF8.self)
                guard TopicRules.checkFilter(filter) == nil,
                    let (options, identifier) = BrokerRecords.decodeSubscription(value)
                else {
                    cleanup.append(.delete(.sessions, key: Array(key)))
                    return
                }
                let subscriber = Subscriber(session: state, options: options, identifier: identifier)
                state.subscriptions[filter] = subscriber
                tree.insert(filter, subscriber)
            case BrokerRecords.deliveryKind:
                guard suffix.count == 8, let record = BrokerRecords.decodeDelivery(value),
                    let message = messages[record.messageKey]
                else {
                    cleanup.append(.delete(.sessions, key: Array(key)))
                    return
                }
                let sequence = UInt64(bigEndian: suffix.loadUnaligned(as: UInt64.self))
                highest = max(highest, sequence)
                let delivery = Delivery(
                    sequence: sequence, message: message, qos: record.qos, retain: record.retain,
                    identifiers: record.identifiers, share: record.share)
                delivery.stored = true
                // The record is written before the PUBLISH goes out, so its sent flag may lag:
                // anything in flight may have reached the client, and goes again with DUP.
                delivery.sent = record.sent || record.state != .queued
                message.references += 1
                if record.state == .queued || record.packetIdentifier == 0
                    || state.inflight[record.packetIdentifier] != nil
                {
                    delivery.sent = false
                    state.queue.append(delivery)
                    if message.expiresAt != nil { state.queueMayExpire = true }
                } else {
                    delivery.state = record.state
                    delivery.packetIdentifier = record.packetIdentifier
                    state.inflight[record.packetIdentifier] = delivery
                    if record.packetIdentifier >= state.nextPacketIdentifier {
                        state.nextPacketIdentifier = record.packetIdentifier == .max ? 1 : record.packetIdentifier + 1
                    }
                }
            case BrokerRecords.willKind:
                guard suffix.isEmpty, let (will, due, delay) = BrokerRecords.decodeWill(value) else {
                    cleanup.append(.delete(.sessions, key: Array(key)))
                    return
                }
                // Due 0: the broker stopped while its connection was up, an unclean end.
                state.willStored = true
                loadedWills.append((state, will, due == 0 ? now + Int64(delay) * 1_000_000 : due))
            case BrokerRecords.inboundKind:
                guard suffix.count == 2 else {
                    cleanup.append(.delete(.sessions, key: Array(key)))
                    return
                }
                state.inboundQoS2.insert(UInt16(bigEndian: suffix.loadUnaligned(as: UInt16.self)))
            default:
                cleanup.append(.delete(.sessions, key: Array(key)))
            }
        }
        for message in messages.values where message.references == 0 {
            cleanup.append(.delete(.messages, key: BrokerRecords.messageKey(message.storeKey)))
            message.storeKey = 0
        }
        sequence = highest
        for (state, will, due) in loadedWills {
            // A connection that was up at the stop gets its due time written (and keeps it
            // across further restarts).
            if let bytes = BrokerRecords.encodeWill(will, due: due, delay: will.properties.willDelayInterval ?? 0) {
                cleanup.append(.put(.sessions, key: BrokerRecords.willKey(state.prefix), value: bytes))
            }
            schedule(will, state, afterMicroseconds: due - now)
        }
        if !cleanup.isEmpty { try await_(store, cleanup) }
    }

    /// Init is synchronous: the cleanup commit is waited for on a semaphore.
    private func await_(_ store: BrokerStore, _ ops: [BrokerStoreOperation]) throws {
        let semaphore = DispatchSemaphore(value: 0)
        let outcome = CommitOutcome()
        store.submit(ops) { result in
            outcome.set(result)
            semaphore.signal()
        }
        semaphore.wait()
        try outcome.get()
    }
}
