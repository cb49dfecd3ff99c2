import CustodyModel
import Broker
import CustodyConfig
import CustodyOperations
import Foundation
import Logging
import MQTTFront
import Metrics
import Prometheus
import ServiceLifecycle
import SessionLedger
import Synchronization

/// The one place the version is written (`custody --version`, the startup line).
enum CustodyVersion {
    static let string = "0.1.0"
}

/// Every logger of the process writes through this: text lines or JSON lines on standard
/// error, at the configured level (`--log-level`, `--log-format`).
func bootstrapLogging(format: CustodyConfiguration.LogFormat, level: CustodyConfiguration.LogLevel) {
    let level = Logger.Level(rawValue: level.rawValue) ?? .info
    LoggingSystem.bootstrap { label in
        switch format {
        case .text: LineLogHandler(label: label, level: level)
        case .json: JSONLogHandler(label: label, level: level)
        }
    }
}

extension CustodyConfiguration {
    /// A metrics endpoint off the loopback interface is refused unless asked for: it tells
    /// anyone who can reach it who connects and how often.
    func validateMetrics() throws {
        guard let metrics, !metrics.isLoopback, !metricsAllowRemote else { return }
        throw SettingsError(
            "metrics \(metrics) is not a loopback address: /metrics would be open to the network; pass --metrics-allow-remote (config key metricsAllowRemote: true) to serve it there anyway")
    }
}

/// What operators get besides MQTT: metrics (when `metrics` is set), lifecycle events over
/// MQTT, a log line per expiry.
final class Operations: Sendable {
    let registry: PrometheusCollectorRegistry?
    let ledgerMetrics: LedgerMetrics?
    let sessionMetrics: SessionMetrics?
    let brokerMetrics: BrokerMetrics?
    let frontMetrics: FrontMetrics?
    let events: LifecycleEventPublisher
    /// The routes that take lifecycle events, once there is a router.
    let lifecycleRouting = LifecycleRouting()

    init(settings: CustodyConfiguration, logger: Logger) {
        if settings.metrics != nil {
            let registry = PrometheusCollectorRegistry()
            let factory = PrometheusMetricsFactory.custody(registry: registry)
            MetricsSystem.bootstrap(factory)
            self.registry = registry
            ledgerMetrics = LedgerMetrics(factory: factory)
            sessionMetrics = SessionMetrics(factory: factory)
            brokerMetrics = BrokerMetrics(factory: factory)
            frontMetrics = FrontMetrics(factory: factory)
            // Which build answers, and since when (for restarts and uptime).
            Gauge(label: "custody_build_info", dimensions: [("version", CustodyVersion.string)], factory: factory).record(1)
            Gauge(label: "custody_start_time_seconds", factory: factory).record(Date().timeIntervalSince1970)
        } else {
            registry = nil
            ledgerMetrics = nil
            sessionMetrics = nil
            brokerMetrics = nil
            frontMetrics = nil
        }
        let sessions = sessionMetrics
        let routing = lifecycleRouting
        events = LifecycleEventPublisher(publishes: !settings.eventSubscribers.isEmpty) { batch in
            sessions?.record(batch)
            routing.send(batch)
            for committed in batch {
                let event = committed.event
                guard case .expired(let reason) = event.kind else { continue }
                logger.info("session expired", metadata: [
                    "session_name": "\(event.sessionName)", "authentication_name": "\(event.authenticationName)",
                    "reason": "\(reason)", "seq": "\(event.sequence)",
                ])
            }
        }
    }

    /// Hooks for `LMDBSessionLedger.init`.
    var onCommit: (@Sendable (CommitStatistics) -> Void)? {
        guard let metrics = ledgerMetrics else { return nil }
        return { statistics in metrics.record(statistics) }
    }

    var onCommitFailure: (@Sendable (LedgerError) -> Void)? {
        guard let metrics = ledgerMetrics else { return nil }
        return { error in metrics.recordFailure(error) }
    }

    var onEvents: @Sendable ([CommittedEvent]) -> Void {
        let events = self.events
        return { events.publish($0) }
    }

    /// Recovery's events (published and counted first), then every commit's, to `broker`.
    func attach(ledger: any SessionAuthority, broker: Broker) {
        events.publish(ledger.recovery.events)
        events.attach(broker)
    }

    /// Serves `/metrics` at `address`; returns the port bound. The gauges are read at each scrape.
    /// `storage`: the node's own LMDB ledger (in a cluster, the one under the cluster authority).
    func startMetrics(at address: HostPort, ledger: any SessionAuthority, storage local: LMDBSessionLedger, broker: Broker) async throws -> Int? {
        guard let registry else { return nil }
        let sessions = sessionMetrics
        let brokers = brokerMetrics
        let storage = ledgerMetrics
        let served = MetricsEndpoint(registry: registry) {
            sessions?.refresh(ledger.sessionCounts)
            if let figures = try? local.storageFigures() { storage?.refresh(figures) }
            brokers?.refresh(broker.totals)
        }
        endpointBox.set(served)
        return try await served.start(host: address.host, port: address.port)
    }

    func stopMetrics() async {
        await endpointBox.take()?.stop()
    }

    private let endpointBox = EndpointBox()
}

private final class EndpointBox: Sendable {
    private let endpoint = Mutex<MetricsEndpoint?>(nil)
    func set(_ value: MetricsEndpoint) { endpoint.withLock { $0 = value } }
    func take() -> MetricsEndpoint? { endpoint.withLock { value in defer { value = nil }; return value } }
}

extension Settings {
    /// `--log-format`, `--metrics`, `--metrics-allow-remote`, `--event-subscriber` over the file's values.
    static func applyOperationsFlags(_ flags: FlagValues, to configuration: inout CustodyConfiguration) throws {
        if let value = flags.logFormat {
            configuration.logFormat = try choice(value, flag: "--log-format")
        }
        if let value = flags.metrics {
            guard let address = HostPort(parsing: value, defaultPort: 9090) else {
                throw SettingsError("--metrics '\(value)' is not HOST:PORT (IPv6 as [HOST]:PORT, port 0-65535)")
            }
            configuration.metrics = address
        }
        if flags.metricsAllowRemote { configuration.metricsAllowRemote = true }
        if !flags.eventSubscribers.isEmpty {
            configuration.eventSubscribers = try flags.eventSubscribers.map { text in
                do {
                    return try AuthenticationName(validating: text)
                } catch {
                    throw SettingsError("--event-subscriber '\(text)' is not a valid authentication name: \(error)")
                }
            }
        }
    }
}
