// Persistent sessions that move between the nodes of a cluster: what the broker tells the
// cluster link of a persistent session (so that another node can take it on), and the state
// a session brings when it resumes here after living on another node.
import Foundation
import LedgerCore
import MQTTCodec
import NIOCore

/// One subscription of a session, as the cluster keeps it.
public struct ClusterSubscription: Sendable, Equatable, Codable {
    public var filter: String
    public var qos: UInt8
    public var noLocal: Bool
    public var retainAsPublished: Bool
    public var retainHandling: UInt8
    public var identifier: UInt32?

    public init(filter: String, options: MQTTSubscriptionOptions, identifier: UInt32?) {
        self.filter = filter
        qos = options.qos.rawValue
        noLocal = options.noLocal
        retainAsPublished = options.retainAsPublished
        retainHandling = options.retainHandling.rawValue
        self.identifier = identifier
    }

    public var options: MQTTSubscriptionOptions {
        MQTTSubscriptionOptions(
            qos: MQTTQoS(rawValue: min(qos, 2)) ?? .atMostOnce, noLocal: noLocal, retainAsPublished: retainAsPublished,
            retainHandling: MQTTRetainHandling(rawValue: retainHandling) ?? .sendOnSubscribe)
    }

    enum CodingKeys: String, CodingKey {
        case filter, qos, noLocal = "nl", retainAsPublished = "rap", retainHandling = "rh", identifier = "id"
    }
}

/// A session as another node needs it to take the session on: its subscriptions, and a
/// time no message it has not acknowledged predates (µs, the broker's clock: the oldest
/// queued or in-flight message's arrival, or now when there is none); and, while it is
/// connected, its will, for a node that sees this one die (`willDelay`: seconds, at most the
/// session's expiry; 0 for a session that is not persistent).
public struct BrokerSessionSnapshot: Sendable {
    public var name: SessionName
    public var persistent: Bool
    public var subscriptions: [ClusterSubscription]
    public var connected: Bool
    public var pendingSince: Int64
    public var will: MQTTWill?
    public var willDelay: UInt32
}

/// A message a session brings from the cluster: as published, and when the cluster stored it
/// (µs since the epoch; its Message Expiry Interval runs from then).
public struct ClusterQueuedMessage: Sendable {
    public var publish: MQTTPublish
    public var storedAt: Int64

    public init(publish: MQTTPublish, storedAt: Int64) {
        self.publish = publish
        self.storedAt = storedAt
    }
}

extension Broker {
    /// A persistent session attached, detached or changed its subscriptions: the cluster link
    /// hears of it (under the lock, in the broker's order). The future succeeds once the
    /// cluster keeps it (nil: nothing to keep).
    @discardableResult
    func tellClusterOfSession(_ state: SessionState) -> EventLoopFuture<Void>? {
        guard let clusterLink, state.persistent || state.will != nil else { return nil }
        state.clusterKept = true
        let since = pendingSince(state)
        let will = state.attachment != 0 ? state.will : nil
        return clusterLink.sessionChanged(BrokerSessionSnapshot(
            name: state.name, persistent: state.persistent,
            subscriptions: state.subscriptions.map { ClusterSubscription(filter: $0.key, options: $0.value.options, identifier: $0.value.identifier) }
                .sorted { $0.filter < $1.filter },
            connected: state.attachment != 0, pendingSince: since, will: will, willDelay: will.map { willDelay($0, state) } ?? 0))
    }

    /// No message `state` has not acknowledged arrived before this (µs): the oldest queued or
    /// in-flight one's arrival, or now.
    func pendingSince(_ state: SessionState) -> Int64 {
        var since = clock()
        for delivery in state.inflight.values { since = min(since, delivery.message.receivedAt) }
        for delivery in state.queue { since = min(since, delivery.message.receivedAt) }
        return since
    }

    /// `pendingSince` of the session `name` now; nil when the broker holds no state for it.
    public func pendingSince(_ name: SessionName) -> Int64? {
        locked { sessions[name].map { pendingSince($0) } }
    }

    /// The session ended here for good (expired, clean start, ended with its connection): the
    /// cluster forgets it too.
    func tellClusterSessionEnded(_ state: SessionState) {
        guard state.clusterKept else { return }
        state.clusterKept = false
        clusterLink?.sessionEnded(state.name)
    }

    /// The will of a session whose node died (SIGKILL) while it was connected, published by
    /// the node that recorded the loss: routed here as its client's PUBLISH would have been
    /// (retained as asked), and to the cluster. Returns once stored here and in the cluster.
    public func publishWillOfLostSession(_ will: MQTTWill, session name: SessionName) async throws(BrokerError) {
        guard TopicRules.isValidTopicName(will.topic) else { return }
        let publish = will.publish
        let waiter = try locked { () throws(BrokerError) -> CommitWaiter? in
            guard !closed else { throw .storage(.closed) }
            var batch = StoreBatch()
            _ = route(publish, from: nil, &batch)
            if will.retain { keepRetained(publish, from: name, &batch) }
            willsPublished += 1
            return forwardToCluster(publish, submitWaiting(batch))
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
    }

    /// Whether the broker holds state for `name`, attached or not.
    public func hasSession(_ name: SessionName) -> Bool {
        locked { sessions[name] != nil }
    }

    /// The session lives on another node now: what this node holds of it goes, without its
    /// will and without telling the cluster (which holds the other node's state). A session
    /// attached here is left alone. Returns whether anything went.
    @discardableResult
    public func forgetMovedSession(_ name: SessionName) async throws -> Bool {
        let waiter: CommitWaiter?? = locked {
            guard let state = sessions[name], state.attachment == 0 else { return .none }
            state.clusterKept = false
            state.pendingWill = nil
            state.will = nil
            waitingWills[ObjectIdentifier(state)] = nil
            var batch = StoreBatch()
            discard(state, &batch)
            sessions[name] = nil
            return .some(submitWaiting(batch))
        }
        guard let waiter else { return false }
        if let waiter { try await waiter.wait().get() }
        return true
    }

    /// A persistent session that lived on another node resumes here: whatever this node held
    /// of it goes (it is stale), and it starts detached with `subscriptions` and, queued in
    /// their order, `messages` (each to the session's matching subscriptions, merged as
    /// routing merges them; shared subscriptions are served by their cluster consumers, and
    /// No Local cannot be told without the publisher). Returns the number of deliveries
    /// queued, once they are durable.
    public func restoreSession(
        _ name: SessionName, subscriptions: [ClusterSubscription], messages: [ClusterQueuedMessage]
    ) async throws(BrokerError) -> Int {
        let (waiter, queued) = try locked { () throws(BrokerError) -> (CommitWaiter?, Int) in
            guard !closed else { throw .storage(.closed) }
            var batch = StoreBatch()
            if let old = sessions[name] {
                guard old.attachment == 0 else { return (nil, 0) }
                old.clusterKept = false
                old.pendingWill = nil
                waitingWills[ObjectIdentifier(old)] = nil
                discard(old, &batch)
                sessions[name] = nil
            }
            let state = SessionState(name: name, persistent: true)
            sessions[name] = state
            for subscription in subscriptions where TopicRules.checkFilter(subscription.filter) == nil {
                let subscriber = Subscriber(session: state, options: subscription.options, identifier: subscription.identifier)
                state.subscriptions[subscription.filter] = subscriber
                tree.insert(subscription.filter, subscriber)
                if store != nil {
                    batch.put(
                        .sessions, key: BrokerRecords.subscriptionKey(state.prefix, subscription.filter),
                        value: BrokerRecords.subscriptionValue(state.prefix, subscription.filter, subscriber.options, subscriber.identifier))
                }
            }
            let queued = queue(messages, for: state, &batch)
            tellClusterOfSession(state)
            return (submitWaiting(batch), queued)
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
        return queued
    }

    /// More messages from the cluster for a session `restoreSession` brought here (queued
    /// behind what it has); returns how many were queued, once durable.
    public func queueForSession(_ name: SessionName, _ messages: [ClusterQueuedMessage]) async throws(BrokerError) -> Int {
        let (waiter, queued) = try locked { () throws(BrokerError) -> (CommitWaiter?, Int) in
            guard !closed else { throw .storage(.closed) }
            guard let state = sessions[name], state.persistent else { return (nil, 0) }
            var batch = StoreBatch()
            let queued = queue(messages, for: state, &batch)
            return (submitWaiting(batch), queued)
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
        return queued
    }

    /// Each message to `state`'s matching plain subscriptions (merged: one copy at the highest
    /// QoS granted, every identifier), queued (or sent, when attached with room).
    private func queue(_ messages: [ClusterQueuedMessage], for state: SessionState, _ batch: inout StoreBatch) -> Int {
        let plain = state.subscriptions.filter { TopicRules.splitShare($0.key) == nil }
        var queued = 0
        for queuedMessage in messages {
            let publish = queuedMessage.publish
            guard publish.qos != .atMostOnce, TopicRules.isValidTopicName(publish.topicName) else { continue }
            var qos: MQTTQoS?
            var retainAsPublished = false
            var identifiers: [UInt32] = []
            for (filter, subscriber) in plain where TopicRules.matches(filter: filter, topic: publish.topicName) {
                qos = max(qos ?? .atMostOnce, subscriber.options.qos)
                if subscriber.options.retainAsPublished { retainAsPublished = true }
                if let id = subscriber.identifier { identifiers.append(id) }
            }
            guard let granted = qos.map({ min($0, publish.qos) }), granted != .atMostOnce else { continue }
            var held = publish
            clean(&held.properties)
            held.packetIdentifier = nil
            held.duplicate = false
            held.payload = Message.compacted(held.payload)
            sequence += 1
            let delivery = OutboundMessage(
                sequence: sequence, message: Message(publish: held, receivedAt: queuedMessage.storedAt), qos: granted,
                retain: publish.retain && retainAsPublished, identifiers: identifiers)
            if store != nil { storeAndHold(delivery, for: state, &batch) }
            if let packet = enqueue(delivery, state, &batch) { post(state, packet) }
            queued += 1
        }
        return queued
    }
}
