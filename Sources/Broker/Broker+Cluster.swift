// Messages across the nodes of a cluster: what a client publishes here is handed to the
// cluster link (which carries it to the other nodes), and what other nodes' clients published
// comes back in through `publishFromCluster`.
import Foundation
import LedgerCore
import MQTTCodec
import NIOCore

/// Carries this node's messages to the other nodes (NATS JetStream in `custody`). The broker
/// shows it every message a client publishes here, under the broker's lock and in its order,
/// after the broker has accepted and routed it locally: it must be quick and must not call the
/// broker. For QoS 1 and 2 `stored` is given: the link calls it once, when the other nodes are
/// sure to get the message (stored by the cluster) or when that failed; the PUBACK or PUBREC
/// waits for it as it waits for the node's own store. (A callback rather than a future: a
/// future's callback added from another thread than its event loop's costs a hop to that
/// loop, once per message.) QoS 0 gets nil (best effort). Messages that came from the cluster
/// are not shown to it again.
public protocol BrokerClusterLink: AnyObject, Sendable {
    func forward(_ publish: MQTTPublish, stored: (@Sendable (Result<Void, any Error>) -> Void)?)
    /// A persistent session attached, detached or changed its subscriptions here (under the
    /// broker's lock, in its order; quick, no calls into the broker). The future (nil: nothing
    /// kept) succeeds once the cluster keeps it: a SUBACK waits for it.
    func sessionChanged(_ snapshot: BrokerSessionSnapshot) -> EventLoopFuture<Void>?
    /// A session the link was told of ended here for good (under the lock, as above).
    func sessionEnded(_ name: SessionName)
}

extension BrokerClusterLink {
    public func sessionChanged(_ snapshot: BrokerSessionSnapshot) -> EventLoopFuture<Void>? { nil }
    public func sessionEnded(_ name: SessionName) {}
}

extension Broker {
    /// From now on every accepted client PUBLISH and every will is shown to `link` (nil: to nobody).
    public func setClusterLink(_ link: (any BrokerClusterLink)?) {
        locked { clusterLink = link }
    }

    /// Shows `publish` to the cluster link (under the lock); the waiter the answer waits for
    /// completes once both the local store and the cluster have it.
    func forwardToCluster(_ publish: MQTTPublish, _ waiter: CommitWaiter?) -> CommitWaiter? {
        guard let clusterLink else { return waiter }
        var copy = publish
        clean(&copy.properties)
        copy.duplicate = false
        guard publish.qos != .atMostOnce else {
            clusterLink.forward(copy, stored: nil)
            return waiter
        }
        let joined = CommitWaiter()
        let gate = JoinGate(parts: waiter == nil ? 1 : 2, joined)
        waiter?.whenComplete { gate.arrive($0) }
        clusterLink.forward(copy) { result in
            switch result {
            case .success: gate.arrive(.success(()))
            case .failure(let error): gate.arrive(.failure(.storage(operation: "cluster publish", code: 5, message: "\(error)")))
            }
        }
        return joined
    }

    /// Completes once both `waiter` (the local store) and `future` (the cluster) have: with
    /// the first failure. `waiter` itself when there is no `future`.
    func joined(_ waiter: CommitWaiter?, _ future: EventLoopFuture<Void>?, operation: String) -> CommitWaiter? {
        guard let future else { return waiter }
        let joined = CommitWaiter()
        let gate = JoinGate(parts: waiter == nil ? 1 : 2, joined)
        waiter?.whenComplete { gate.arrive($0) }
        future.whenComplete { result in
            switch result {
            case .success: gate.arrive(.success(()))
            case .failure(let error):
                gate.arrive(.failure(.storage(operation: operation, code: 5, message: "\(error)")))
            }
        }
        return joined
    }

    /// Messages other nodes' clients published, in their cluster order: routed to this node's
    /// sessions and kept retained as a local PUBLISH is, but not shown to the publish tap (the
    /// publishing node's routes have them) nor to the cluster link. Returns once what they
    /// stored here is durable; throws `.storage` when it could not be (nothing is then
    /// acknowledged to the cluster, which delivers them again).
    public func publishFromCluster(_ publishes: [MQTTPublish]) async throws(BrokerError) {
        if let waiter = try routeFromCluster(publishes), case .failure(let error) = await waiter.wait() {
            throw .storage(error)
        }
    }

    /// `publishFromCluster` without waiting for the store (QoS 0 from the cluster: best effort).
    public func publishFromClusterAtOnce(_ publishes: [MQTTPublish]) throws(BrokerError) {
        _ = try routeFromCluster(publishes)
    }

    /// Whether a message to `topic` from another node would reach any session here: a plain
    /// (not shared) subscription matches it. One topic-tree walk; the node's consumer asks it
    /// once per JetStream message (all of one topic) and skips the others undecoded.
    public func wantsFromCluster(topic: String) -> Bool {
        locked {
            tree.match(topic, publisher: nil, into: &matches, shares: false)
            defer { matches.removeAll(keepingCapacity: true) }
            return !matches.isEmpty
        }
    }

    /// Retained messages as the cluster keeps them (read when the node starts): kept here as
    /// a retained PUBLISH is, an empty one clearing its topic, but delivered to nobody. Returns
    /// once durable.
    public func keepRetainedFromCluster(_ publishes: [MQTTPublish]) async throws(BrokerError) {
        let waiter = try locked { () throws(BrokerError) -> CommitWaiter? in
            guard !closed else { throw .storage(.closed) }
            var batch = StoreBatch()
            for publish in publishes where TopicRules.isValidTopicName(publish.topicName) {
                keepRetained(publish, from: nil, &batch)
            }
            return submitWaiting(batch)
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
    }

    /// The shared subscriptions (`$share/G/F`) that have members on this node.
    public var sharedSubscriptions: Set<String> {
        locked { Set(tree.groups.filter { !$0.value.members.isEmpty }.keys) }
    }

    /// Messages for one shared subscription, taken from the cluster's consumer of that share:
    /// each goes to one member here. Returns once durable.
    public func deliverSharedFromCluster(_ publishes: [MQTTPublish], share: String) async throws(BrokerError) {
        let waiter = try locked { () throws(BrokerError) -> CommitWaiter? in
            guard !closed else { throw .storage(.closed) }
            var batch = StoreBatch()
            for publish in publishes where TopicRules.isValidTopicName(publish.topicName) {
                _ = route(publish, from: nil, &batch, shares: .only(share))
            }
            return submitWaiting(batch)
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
    }

    private func routeFromCluster(_ publishes: [MQTTPublish]) throws(BrokerError) -> CommitWaiter? {
        try locked { () throws(BrokerError) -> CommitWaiter? in
            guard !closed else { throw .storage(.closed) }
            var batch = StoreBatch()
            for publish in publishes where TopicRules.isValidTopicName(publish.topicName) {
                _ = route(publish, from: nil, &batch, shares: .none)
                // Within this node's retained limits (a refused one is not kept here).
                if publish.retain { keepRetained(publish, from: nil, &batch) }
            }
            return submitWaiting(batch)
        }
    }
}

/// Completes `waiter` once `parts` results have arrived: with the first failure, else success.
final class JoinGate: @unchecked Sendable {
    private let lock = NSLock()
    private var remaining: Int
    private var failure: LedgerError?
    private let waiter: CommitWaiter

    init(parts: Int, _ waiter: CommitWaiter) {
        remaining = parts
        self.waiter = waiter
    }

    func arrive(_ result: Result<Void, LedgerError>) {
        lock.lock()
        if case .failure(let error) = result, failure == nil { failure = error }
        remaining -= 1
        let done: Result<Void, LedgerError>? = remaining == 0 ? failure.map { .failure($0) } ?? .success(()) : nil
        lock.unlock()
        if let done { waiter.complete(done) }
    }
}
