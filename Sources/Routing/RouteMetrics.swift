import CoreMetrics
import Foundation

/// One route's metrics (swift-metrics; Prometheus names when `custody --metrics`):
/// `custody_route_delivered_total`, `custody_route_requests_total` (requests answered 2xx: in
/// batch mode, events delivered per request), `custody_route_failed_total{status}` (an HTTP status, or
/// `error` when no answer came), `custody_route_deadlettered_total`, the outbox's
/// `custody_route_outbox_events` and `custody_route_outbox_oldest_age_seconds`, and the
/// `custody_route_delivery_seconds` histogram (acceptance to 2xx, per event).
struct RouteMetrics: Sendable {
    let route: String
    let delivered: Counter
    let requests: Counter
    let deadLettered: Counter
    let outboxEvents: Gauge
    let oldestAge: Gauge
    let latency: CoreMetrics.Timer

    init(route: String) {
        self.route = route
        let dimensions = [("route", route)]
        delivered = Counter(label: "custody_route_delivered_total", dimensions: dimensions)
        requests = Counter(label: "custody_route_requests_total", dimensions: dimensions)
        deadLettered = Counter(label: "custody_route_deadlettered_total", dimensions: dimensions)
        outboxEvents = Gauge(label: "custody_route_outbox_events", dimensions: dimensions)
        oldestAge = Gauge(label: "custody_route_outbox_oldest_age_seconds", dimensions: dimensions)
        latency = CoreMetrics.Timer(label: "custody_route_delivery_seconds", dimensions: dimensions, preferredDisplayUnit: .seconds)
    }

    func failed(status: Int?) {
        Counter(label: "custody_route_failed_total", dimensions: [("route", route), ("status", status.map { "\($0)" } ?? "error")])
            .increment()
    }

    func outbox(events: Int, oldestAcceptedAt: Int64?, now: Int64) {
        outboxEvents.record(events)
        oldestAge.record(Double(max(0, now - (oldestAcceptedAt ?? now))) / 1e6)
    }
}
