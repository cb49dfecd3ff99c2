import Authorization
import Broker
import CustodyConfig
import Foundation
import LedgerCore
import Routing
import SessionLedger
import ServiceLifecycle
import Synchronization

// Routes for `custody` (issue 21): the router as the broker's publish tap and the lifecycle
// events' second reader, its clients' attributes from the access rules in force, its
// delivery as a service, its routes replaced on SIGHUP.

extension CustodyConfiguration {
    /// Routed CloudEvents' `source`: `namespace.name`, else the host name.
    var routingSource: String { namespace.name ?? ProcessInfo.processInfo.hostName }

    /// What start-up says of the routes.
    func routeLines(_ router: Router) -> [String] {
        let usage = Dictionary(uniqueKeysWithValues: router.outboxes.map { ($0.route, $0) })
        var lines = routes.map { route in
            let filters = route.topicFilters.joined(separator: ",")
            return "custody: route \(route.name) -> \(route.endpoint.absoluteString) mode=\(route.mode.rawValue) topic_filters=\(filters.isEmpty ? "-" : filters) lifecycle_events=\(route.lifecycleEvents) outbox_events=\(usage[route.name]?.events ?? 0)"
        }
        for (name, count) in router.orphanedEvents.sorted(by: { $0.key < $1.key }) {
            lines.append("custody: warning: the outbox of route \(name), no longer configured, keeps \(count) events (custody-audit routes shows them)")
        }
        lines.append("custody: routes \(routes.count) source=\(routingSource); SIGHUP reloads them")
        return lines
    }
}

/// The access rules the routes' `fromClientAttributes` enrichments read (replaced on SIGHUP).
final class RouteAttributes: Sendable {
    private let rules = Mutex<AccessRules?>(nil)

    func replace(_ access: AccessRules) { rules.withLock { $0 = access } }

    func attributes(authenticationName: String, sessionName: String, signIn: [String: String]) -> [String: String] {
        guard let access = rules.withLock({ $0 }) else { return signIn }
        let facts = access.facts(
            authenticationName: authenticationName, sessionName: sessionName, signIn: signIn.mapValues { .string($0) })
        return facts.attributes.mapValues(\.text)
    }
}

/// Route delivery: runs until the graceful shutdown, then stops after the attempts under way
/// (what is not delivered stays in the outbox for the next start).
struct RoutesService: Service, CustomStringConvertible {
    let router: Router

    func run() async throws {
        router.start()
        try? await gracefulShutdown()
        await router.shutdown()
    }

    var description: String { "routes" }
}

/// Where the lifecycle publisher's queue hands ledger events on to the routes (set once the
/// router exists, before recovery's events are published).
final class LifecycleRouting: Sendable {
    /// Boxed: a closure kept in a `Mutex` itself is wrapped in one more reabstraction thunk
    /// by every `withLock { $0 }`, so each call would cost more than the last (and recurse
    /// deeper) for as long as custody runs.
    private final class Target: Sendable {
        let body: @Sendable ([CommittedEvent]) -> Void
        init(_ body: @escaping @Sendable ([CommittedEvent]) -> Void) { self.body = body }
    }
    private let target = Mutex<Target?>(nil)

    func set(_ body: @escaping @Sendable ([CommittedEvent]) -> Void) { target.withLock { $0 = Target(body) } }

    func send(_ events: [CommittedEvent]) { target.withLock { $0 }?.body(events) }
}

extension Router {
    /// At start, before the commit hook's events are handed on: the ledger's events after the
    /// routes' cursor (a crash may have come between their commit and the routes' write), or,
    /// the first time, from recovery's. Events older than the lifecycle routes' longest
    /// `retry.maxAgeMinutes` are left: they would only be dead-lettered. Returns how many.
    func replayLifecycle(from ledger: LMDBSessionLedger, recovery: RecoveryReport) throws -> Int {
        let first: UInt64
        if let cursor = lifecycleCursorAtStart {
            first = cursor + 1
        } else {
            first = recovery.events.first?.event.sequence ?? ledger.head.sequence + 1
        }
        guard first <= ledger.head.sequence, let maxAge = lifecycleReplayAgeMinutes else { return 0 }
        let oldest = wallClockMicroseconds() - Int64(maxAge) * 60_000_000
        let events = try ledger.records(from: first)
            .filter { $0.event.timestamp >= oldest }
            .map { CommittedEvent(event: $0.event, hash: $0.hash) }
        if !events.isEmpty { lifecycle(events) }
        return events.count
    }
}
