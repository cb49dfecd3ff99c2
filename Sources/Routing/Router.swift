import AsyncHTTPClient
import Authorization
import Broker
import CustodyConfig
import Dispatch
import Foundation
import LMDBStorage
import LedgerCore
import Logging
import MQTTCodec
import Synchronization

/// Routes (issue 21): every accepted PUBLISH whose topic a route's filters match, and every
/// ledger event for routes with `lifecycleEvents`, becomes a CloudEvent in that route's
/// outbox, in the broker store, in the same write as the broker's own records of the message
/// (so a PUBACK, or an HTTP publish's 204, comes only once the event is durable); one
/// `RouteWorker` per route delivers them in order.
///
/// Installed as the broker's publish tap (`Broker.setPublishTap`): `capture` runs under the
/// broker's lock, so events are numbered in the order the broker accepted their messages.
/// A QoS 0 message's events are best-effort: kept in memory only, not in the store, and
/// handed to the route behind the writes accepted before them (so a route's order holds).
public final class Router: BrokerPublishTap, Sendable {
    /// Extension attributes from a client's attributes (the registry's merged with sign-in's):
    /// asked only for routes with `enrichments.fromClientAttributes`.
    public typealias ClientAttributes = @Sendable (_ authenticationName: String, _ sessionName: String, _ signIn: [String: String])
        -> [String: String]

    private struct Slot {
        var route: RouteConfiguration
        var filters: [MQTTTopicFilter]
        var worker: RouteWorker
        var task: Task<Void, Never>?
        /// The number the route's next event gets.
        var next: UInt64
    }

    private struct State {
        var slots: [Slot] = []
        var client: HTTPClient?
        /// Events of the store for routes no longer configured, by route.
        var orphans: [String: [OutboxRecord]] = [:]
        /// The last ledger sequence number whose events the routes took (nil: none yet).
        var lifecycleThrough: UInt64?
    }

    private let state: Mutex<State>
    private let broker: Broker
    private let store: BrokerStore
    /// Routed events' `source`: the namespace's name.
    public let source: String
    private let clientAttributes: ClientAttributes
    private let logger: Logger
    private let eventIDs = EventIDs()
    /// Dead-letters for full outboxes, off the broker's lock.
    private let overflowQueue = DispatchQueue(label: "custody.routes.overflow")

    /// Reads the outboxes the store holds; nothing is sent before `start`.
    public init(
        routes: [RouteConfiguration], broker: Broker, source: String, logger: Logger,
        clientAttributes: @escaping ClientAttributes = { _, _, signIn in signIn }
    ) throws {
        guard let store = broker.tapStore else { throw RouterError("routes need the broker's store") }
        self.broker = broker
        self.store = store
        self.source = source
        self.logger = logger
        self.clientAttributes = clientAttributes
        var byRoute: [String: [OutboxRecord]] = [:]
        for record in try OutboxRecord.all(in: store) { byRoute[record.route, default: []].append(record) }
        var state = State()
        for route in routes {
            let worker = RouteWorker(route: route, broker: broker, store: store, logger: logger)
            let held = byRoute.removeValue(forKey: route.name) ?? []
            worker.load(held)
            state.slots.append(Slot(
                route: route, filters: route.topicFilters.compactMap(MQTTTopicFilter.init), worker: worker,
                next: Self.firstNumber(route, held)))
        }
        state.orphans = byRoute
        state.lifecycleThrough = try LifecycleRouteCursor.read(in: store)
        lifecycleCursorAtStart = state.lifecycleThrough
        self.state = Mutex(state)
    }

    /// The last ledger sequence number whose events the routes had taken when the store was
    /// read (nil: never): the executable hands the ledger's later events to `lifecycle` again.
    public let lifecycleCursorAtStart: UInt64?

    /// The longest `retry.maxAgeMinutes` of the routes that take lifecycle events (nil: none
    /// does): older events would only be dead-lettered, so they are not read again at start.
    public var lifecycleReplayAgeMinutes: Int? {
        state.withLock { state in state.slots.filter(\.route.lifecycleEvents).map(\.route.maxAgeMinutes).max() }
    }

    /// Events each route's outbox holds now, by route, in the configuration's order.
    public var outboxes: [(route: String, events: Int, bytes: Int)] {
        state.withLock { state in state.slots.map { ($0.route.name, $0.worker.usage.events, $0.worker.usage.bytes) } }
    }

    /// Events in the store for routes that are not configured (kept for when they are again).
    public var orphanedEvents: [String: Int] { state.withLock { $0.orphans.mapValues(\.count) } }

    /// Starts every route's delivery.
    public func start() {
        state.withLock { state in
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(
                redirectConfiguration: .disallow, timeout: .init(connect: .seconds(10))))
            state.client = client
            for index in state.slots.indices { state.slots[index].task = Self.launch(state.slots[index].worker, client) }
        }
    }

    /// The number a route's next event gets: after the events its outbox holds and after
    /// those its dead-letter directory holds, so that no entry there is written over by a
    /// later event of the same number (numbers are not kept once delivered).
    private static func firstNumber(_ route: RouteConfiguration, _ held: [OutboxRecord]) -> UInt64 {
        var highest = held.last?.number ?? 0
        if case .directory(let directory) = route.deadLetter {
            highest = max(highest, DeadLetterSink.highestNumber(route: route.name, in: directory))
        }
        return highest + 1
    }

    private static func launch(_ worker: RouteWorker, _ client: HTTPClient) -> Task<Void, Never> {
        Task { await worker.run(client: client) }
    }

    /// Stops every route after the attempt under way (what is not delivered stays in the
    /// store for the next start).
    public func shutdown() async {
        let (tasks, client) = state.withLock { state -> ([Task<Void, Never>], HTTPClient?) in
            for slot in state.slots { slot.worker.stop() }
            defer { state.client = nil }
            return (state.slots.compactMap(\.task), state.client)
        }
        // A request under way is abandoned (its events stay in the outbox), not waited for.
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        try? await client?.shutdown()
    }

    /// The routes from now on (SIGHUP): an unchanged route keeps going; a changed one stops
    /// after its attempt under way and its successor takes its outbox; a new one starts (with
    /// what the store kept for its name); a removed one stops, its events kept in the store.
    public func replace(_ routes: [RouteConfiguration]) {
        state.withLock { state in
            var old = Dictionary(uniqueKeysWithValues: state.slots.map { ($0.route.name, $0) })
            var slots: [Slot] = []
            for route in routes {
                if let slot = old.removeValue(forKey: route.name) {
                    if slot.route == route {
                        slots.append(slot)
                        continue
                    }
                    let worker = RouteWorker(route: route, broker: broker, store: store, logger: logger)
                    slot.worker.stop(handingOverTo: worker)
                    slot.task?.cancel()
                    slots.append(Slot(
                        route: route, filters: route.topicFilters.compactMap(MQTTTopicFilter.init), worker: worker,
                        task: state.client.map { Self.launch(worker, $0) }, next: slot.next))
                } else {
                    let worker = RouteWorker(route: route, broker: broker, store: store, logger: logger)
                    let held = state.orphans.removeValue(forKey: route.name) ?? []
                    worker.load(held)
                    slots.append(Slot(
                        route: route, filters: route.topicFilters.compactMap(MQTTTopicFilter.init), worker: worker,
                        task: state.client.map { Self.launch(worker, $0) }, next: Self.firstNumber(route, held)))
                }
            }
            for slot in old.values {
                slot.worker.stop()
                slot.task?.cancel()
            }
            state.slots = slots
        }
    }

    // MARK: The broker's publish tap

    public func capture(_ publish: MQTTPublish, from publisher: PublisherFacts?) -> TapCapture? {
        let topic = publish.topicName
        var admission = Admission(now: wallClockMicroseconds())
        var id: String?
        state.withLock { state in
            for index in state.slots.indices where state.slots[index].filters.contains(where: { $0.matches(topic) }) {
                let eventID = id ?? eventIDs.next()
                id = eventID
                // Kept compact: the JSON is made when the event is sent (StoredEvent).
                let attributes = extensions(state.slots[index].route, publisher)
                let event = StoredEvent.compact(
                    publish, id: eventID, source: source, authenticationName: publisher?.authenticationName,
                    sessionName: publisher?.sessionName, extensions: attributes)
                    ?? CloudEvents.published(
                        publish, id: eventID, source: source, time: admission.now,
                        authenticationName: publisher?.authenticationName, sessionName: publisher?.sessionName,
                        extensions: attributes)
                admission.admit(event, into: &state.slots[index], inStore: publish.qos != .atMostOnce)
            }
        }
        return finish(admission)
    }

    /// Ledger events (the lifecycle publisher's queue, in sequence order; at start, what the
    /// ledger committed after `lifecycleCursorAtStart`) for the routes that take them: written
    /// in the broker's order, with the cursor (`LifecycleRouteCursor`) in the same write, and
    /// delivered as the routes' messages are. Events at or before the cursor were taken
    /// already and are skipped.
    public func lifecycle(_ events: [CommittedEvent]) {
        broker.submitInOrder {
            var admission = Admission(now: wallClockMicroseconds())
            state.withLock { state in
                let fresh = state.lifecycleThrough.map { through in events.filter { $0.event.sequence > through } } ?? events
                guard let last = fresh.last?.event.sequence else { return }
                state.lifecycleThrough = last
                for index in state.slots.indices where state.slots[index].route.lifecycleEvents {
                    let extensions = extensions(state.slots[index].route, nil)
                    for committed in fresh {
                        admission.admit(CloudEvents.lifecycle(committed, source: source, extensions: extensions), into: &state.slots[index])
                    }
                }
                admission.operations.append(LifecycleRouteCursor.put(last))
            }
            return finish(admission)
        }
    }

    /// The events of one capture: numbered in their route, kept within its outbox's limits
    /// or set aside for dead-letter.
    private struct Admission {
        let now: Int64
        var operations: [BrokerStoreOperation] = []
        var accepted: [(RouteWorker, OutboxRecord)] = []
        var overflow: [(RouteWorker, OutboxRecord)] = []

        init(now: Int64) { self.now = now }

        mutating func admit(_ event: [UInt8], into slot: inout Slot, inStore: Bool = true) {
            let record = OutboxRecord(route: slot.route.name, number: slot.next, acceptedAt: now, event: event, inStore: inStore)
            slot.next += 1
            if slot.worker.reserve(record.size) {
                if inStore { operations.append(record.put) }
                accepted.append((slot.worker, record))
            } else {
                overflow.append((slot.worker, record))
            }
        }
    }

    /// What the admitted events add to the store write, and their hand-over to the workers
    /// once durable; the overflow goes to dead-letter.
    private func finish(_ admission: Admission) -> TapCapture? {
        if !admission.overflow.isEmpty { dead(admission.overflow) }
        guard !admission.accepted.isEmpty || !admission.operations.isEmpty else { return nil }
        let accepted = admission.accepted
        return TapCapture(operations: admission.operations) { durable in
            for (worker, record) in accepted {
                if durable { worker.enqueue([record]) } else { worker.release(record.size) }
            }
        }
    }

    private func dead(_ overflow: [(RouteWorker, OutboxRecord)]) {
        logger.warning("route outbox full: events dead-lettered", metadata: [
            "routes": "\(Set(overflow.map(\.0.route.name)).sorted().joined(separator: ","))", "events": "\(overflow.count)",
        ])
        overflowQueue.async {
            for (worker, record) in overflow { worker.overflowed(record) }
        }
    }

    private func extensions(_ route: RouteConfiguration, _ publisher: PublisherFacts?) -> CloudEvents.Extensions {
        var attributes = route.staticEnrichments
        if !route.enrichmentsFromClientAttributes.isEmpty, let publisher {
            let known = clientAttributes(publisher.authenticationName, publisher.sessionName, publisher.signInAttributes)
            for name in route.enrichmentsFromClientAttributes {
                if let value = known[name] { attributes.append((name, value)) }
            }
        }
        return CloudEvents.Extensions(attributes)
    }
}

public struct RouterError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
