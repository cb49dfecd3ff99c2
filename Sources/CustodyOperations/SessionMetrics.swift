import Broker
import CoreMetrics
import LedgerCore
import LedgerCore
import Synchronization

/// Sessions as the ledger sees them, through swift-metrics: what each committed event says
/// (takeovers, disconnects by reason, expiries by reason, rejections by reason) and gauges of
/// live, connected and disconnected sessions.
///
/// `record` runs on the ledger's writer thread: every counter is made here once and found by
/// the reason's raw value, so an event costs an array index and an atomic add.
public final class SessionMetrics: Sendable {
    private let connected: CoreMetrics.Counter
    private let takeovers: CoreMetrics.Counter
    private let disconnects: [CoreMetrics.Counter?]
    private let expiries: [CoreMetrics.Counter?]
    private let rejections: [CoreMetrics.Counter?]
    private let connectedNow: Gauge
    private let disconnectedNow: Gauge

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        func table<Reason: RawRepresentable & CaseIterable>(
            _ type: Reason.Type, _ label: String
        ) -> [CoreMetrics.Counter?] where Reason.RawValue == UInt8 {
            var table = [CoreMetrics.Counter?](repeating: nil, count: 256)
            for reason in Reason.allCases {
                table[Int(reason.rawValue)] = CoreMetrics.Counter(
                    label: label, dimensions: [("reason", "\(reason)")], factory: factory)
            }
            return table
        }
        connected = CoreMetrics.Counter(label: "custody_sessions_connected_total", factory: factory)
        takeovers = CoreMetrics.Counter(label: "custody_sessions_takeovers_total", factory: factory)
        disconnects = table(DisconnectReason.self, "custody_sessions_disconnected_total")
        expiries = table(ExpiryReason.self, "custody_sessions_expired_total")
        rejections = table(RejectionReason.self, "custody_sessions_rejected_total")
        // One family: `sum(custody_sessions_live)` is every live session. (Not
        // custody_sessions_connected: that would be the family of the counter below.)
        connectedNow = Gauge(label: "custody_sessions_live", dimensions: [("state", "connected")], factory: factory)
        disconnectedNow = Gauge(label: "custody_sessions_live", dimensions: [("state", "disconnected")], factory: factory)
    }

    /// The events of one commit (or of recovery).
    public func record(_ events: [CommittedEvent]) {
        for committed in events {
            switch committed.event.kind {
            case .connected:
                connected.increment()
            case .disconnected(let reason):
                disconnects[Int(reason.rawValue)]?.increment()
                if reason == .sessionTakenOver { takeovers.increment() }
            case .expired(let reason):
                expiries[Int(reason.rawValue)]?.increment()
            case .rejected(let reason):
                rejections[Int(reason.rawValue)]?.increment()
            }
        }
    }

    /// The gauges, from the ledger's running counts.
    public func refresh(_ counts: SessionCounts?) {
        guard let counts else { return }
        connectedNow.record(counts.connected)
        disconnectedNow.record(counts.disconnected)
    }
}

/// The broker's figures: sessions, queued and in-flight messages, retained messages (gauges,
/// read at each scrape with one pass over the broker's sessions), and messages dropped by
/// reason, wills and lifecycle events published (counters).
public final class BrokerMetrics: Sendable {
    private let sessions: Gauge
    private let attached: Gauge
    private let queued: Gauge
    private let inflight: Gauge
    private let retained: Gauge
    private let droppedQueueFull: CoreMetrics.Counter
    private let droppedExpired: CoreMetrics.Counter
    private let droppedTooLarge: CoreMetrics.Counter
    private let wills: CoreMetrics.Counter
    private let events: CoreMetrics.Counter
    /// What the counters were last raised to (the broker counts since its start).
    private let last = Mutex(Broker.Totals())

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        sessions = Gauge(label: "custody_broker_sessions", factory: factory)
        attached = Gauge(label: "custody_broker_sessions_attached", factory: factory)
        queued = Gauge(label: "custody_broker_messages_queued", factory: factory)
        inflight = Gauge(label: "custody_broker_messages_inflight", factory: factory)
        retained = Gauge(label: "custody_broker_retained_messages", factory: factory)
        let dropped = "custody_broker_messages_dropped_total"
        droppedQueueFull = CoreMetrics.Counter(label: dropped, dimensions: [("reason", "queue_full")], factory: factory)
        droppedExpired = CoreMetrics.Counter(label: dropped, dimensions: [("reason", "expired")], factory: factory)
        droppedTooLarge = CoreMetrics.Counter(label: dropped, dimensions: [("reason", "too_large")], factory: factory)
        wills = CoreMetrics.Counter(label: "custody_broker_wills_published_total", factory: factory)
        events = CoreMetrics.Counter(label: "custody_lifecycle_events_published_total", factory: factory)
    }

    public func refresh(_ totals: Broker.Totals) {
        sessions.record(totals.sessions)
        attached.record(totals.attached)
        queued.record(totals.queued)
        inflight.record(totals.inflight)
        retained.record(totals.retained)
        last.withLock { last in
            droppedQueueFull.increment(by: max(0, totals.droppedQueueFull - last.droppedQueueFull))
            droppedExpired.increment(by: max(0, totals.droppedExpired - last.droppedExpired))
            droppedTooLarge.increment(by: max(0, totals.droppedTooLarge - last.droppedTooLarge))
            wills.increment(by: max(0, totals.willsPublished - last.willsPublished))
            events.increment(by: max(0, totals.serverPublished - last.serverPublished))
            last = totals
        }
    }
}
