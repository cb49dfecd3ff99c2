import Foundation
import LedgerCore
import CoreMetrics
import Metrics
import Prometheus

/// The ledger's figures, through swift-metrics: commits, events, events per commit,
/// commit and sync latency, failed commits by kind. `record` runs on the writer thread.
public final class LedgerMetrics: Sendable {
    public static let eventsPerCommitLabel = "custody_ledger_events_per_commit"
    public static let commitDurationLabel = "custody_ledger_commit_duration_seconds"
    public static let syncDurationLabel = "custody_ledger_sync_duration_seconds"

    private let factory: any MetricsFactory
    private let commits: CoreMetrics.Counter
    private let events: CoreMetrics.Counter
    private let requests: CoreMetrics.Counter
    private let eventsPerCommit: CoreMetrics.Recorder
    private let commitDuration: CoreMetrics.Timer
    private let syncDuration: CoreMetrics.Timer
    private let liveBytes: CoreMetrics.Gauge
    private let archiveBytes: CoreMetrics.Gauge
    private let mapUsedRatio: CoreMetrics.Gauge
    private let oldestLiveEventAge: CoreMetrics.Gauge
    private let archiveSegments: CoreMetrics.Gauge

    /// `factory`: where the metrics go; the process-wide `MetricsSystem` by default.
    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        commits = CoreMetrics.Counter(label: "custody_ledger_commits_total", factory: factory)
        events = CoreMetrics.Counter(label: "custody_ledger_events_total", factory: factory)
        requests = CoreMetrics.Counter(label: "custody_ledger_requests_total", factory: factory)
        eventsPerCommit = CoreMetrics.Recorder(label: Self.eventsPerCommitLabel, aggregate: true, factory: factory)
        commitDuration = CoreMetrics.Timer(label: Self.commitDurationLabel, factory: factory)
        syncDuration = CoreMetrics.Timer(label: Self.syncDurationLabel, factory: factory)
        liveBytes = CoreMetrics.Gauge(label: "custody_ledger_bytes", dimensions: [("part", "live")], factory: factory)
        archiveBytes = CoreMetrics.Gauge(label: "custody_ledger_bytes", dimensions: [("part", "archive")], factory: factory)
        mapUsedRatio = CoreMetrics.Gauge(label: "custody_ledger_map_used_ratio", factory: factory)
        oldestLiveEventAge = CoreMetrics.Gauge(label: "custody_ledger_oldest_live_event_age_seconds", factory: factory)
        archiveSegments = CoreMetrics.Gauge(label: "custody_ledger_archive_segments", factory: factory)
    }

    /// The storage gauges (read at each scrape): bytes live and archived, the map's used
    /// ratio, the oldest live event's age, the archive's segments.
    public func refresh(_ figures: LedgerStorageFigures, now: Int64 = wallClockMicroseconds()) {
        liveBytes.record(figures.liveBytes)
        archiveBytes.record(figures.archiveBytes)
        mapUsedRatio.record(figures.mapUsedRatio)
        oldestLiveEventAge.record(Double(max(0, now - (figures.oldestLiveEvent ?? now))) / 1_000_000)
        archiveSegments.record(figures.archiveSegments)
    }

    public func record(_ statistics: CommitStatistics) {
        commits.increment()
        events.increment(by: statistics.events)
        requests.increment(by: statistics.requests)
        eventsPerCommit.record(statistics.events)
        commitDuration.recordMicroseconds(statistics.microseconds)
        syncDuration.recordMicroseconds(statistics.syncMicroseconds)
    }

    public func recordFailure(_ error: LedgerError) {
        CoreMetrics.Counter(label: "custody_ledger_commit_failures_total", dimensions: [("kind", Self.kind(of: error))], factory: factory)
            .increment()
    }

    /// A small fixed set of label values: details (paths, messages) would make unbounded ones.
    static func kind(of error: LedgerError) -> String {
        switch error {
        case .storage(_, let code, _):
            if error.isMapFull { return "map_full" }
            switch code {
            case ENOSPC: return "disk_full"
            case EIO: return "io_error"
            default: return "storage_error"
            }
        case .notALedger: return "not_a_ledger"
        case .unsupportedFormat: return "unsupported_format"
        case .corruptRecord: return "corrupt_record"
        case .closed: return "closed"
        }
    }
}

extension PrometheusMetricsFactory {
    /// A factory over `registry` with buckets that suit Custody's histograms.
    public static func custody(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.valueHistogramBuckets[LedgerMetrics.eventsPerCommitLabel] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
        let latency: [Duration] = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .seconds(1),
        ]
        factory.durationHistogramBuckets[LedgerMetrics.commitDurationLabel] = latency
        factory.durationHistogramBuckets[LedgerMetrics.syncDurationLabel] = latency
        return factory
    }
}
