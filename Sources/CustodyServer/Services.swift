import Broker
import CustodyOperations
import Foundation
import LedgerService
import Logging
import MQTTFront
import ServiceLifecycle
import SessionLedger
import Synchronization

// `custody`'s parts as swift-service-lifecycle services, run by one ServiceGroup. Each is
// started (listeners bound, ports known) before the group runs, so that the start-up lines
// can name them; the group's graceful shutdown (the first SIGTERM or SIGINT) then stops them
// in reverse order of `custodyServices`: the front first (DISCONNECT 0x8B to every v5
// connection, every end recorded in one ledger commit), the stores last.

/// The MQTT front: on graceful shutdown it closes every connection and records their ends.
struct MQTTFrontService: Service, CustomStringConvertible {
    let front: MQTTFront
    let closed: ShutdownTally

    func run() async throws {
        try? await gracefulShutdown()
        closed.connections = await front.shutdown()
    }

    var description: String { "mqtt-front" }
}

/// The ledger socket: on graceful shutdown (before the front's) its peers' connections are
/// recorded as ended by the server and the peers closed; the socket file goes.
struct LedgerSocketService: Service, CustomStringConvertible {
    let server: LedgerSocketServer
    let closed: ShutdownTally

    func run() async throws {
        try? await gracefulShutdown()
        closed.socketConnections = await server.shutdown()
    }

    var description: String { "ledger-socket" }
}

/// Expires sessions as their deadlines pass and tells the front, until the shutdown.
struct ExpiryService: Service, CustomStringConvertible {
    let ledger: any SessionAuthority
    let front: MQTTFront

    func run() async throws {
        let front = self.front
        await cancelWhenGracefulShutdown {
            await ledger.runExpiry { events in front.sessionsExpired(events) }
        }
    }

    var description: String { "session-expiry" }
}

/// The ledger's room: archiving in the background (when a retention is set), the storage
/// gauges, and a warning while the map is 80% used or more (once when it gets there, then
/// every ten minutes while it stays), until the shutdown.
struct LedgerStorageService: Service, CustomStringConvertible {
    let ledger: LMDBSessionLedger
    let metrics: LedgerMetrics?
    let logger: Logger
    static let warningRatio = 0.8

    func run() async throws {
        let logger = self.logger
        ledger.startArchiving(
            onArchived: { header in
                logger.info("ledger segment archived", metadata: [
                    "segment": "\(header.name)", "first_seq": "\(header.first)", "last_seq": "\(header.last)",
                    "bytes": "\(header.compressedBytes)", "uncompressed_bytes": "\(header.bodyBytes)",
                ])
            },
            onFailure: { error in logger.error("ledger archiving failed", metadata: ["error": "\(error)"]) })
        await cancelWhenGracefulShutdown {
            var warnedAt: ContinuousClock.Instant?
            while !Task.isCancelled {
                if let figures = try? ledger.storageFigures() {
                    metrics?.refresh(figures)
                    if figures.mapUsedRatio >= Self.warningRatio || figures.inReserve {
                        let now = ContinuousClock.now
                        if warnedAt.map({ now - $0 >= .seconds(600) }) ?? true {
                            warnedAt = now
                            logger.warning("ledger map nearly full", metadata: [
                                "map_used_ratio": "\(String(format: "%.3f", figures.mapUsedRatio))",
                                "live_bytes": "\(figures.liveBytes)", "in_reserve": "\(figures.inReserve)",
                                "hint": "CONNECTs are refused (0x88) once only the reserve is left: raise --ledger-map-size-mib or lower the retention",
                            ])
                        }
                    } else {
                        warnedAt = nil
                    }
                }
                try? await Task.sleep(for: .seconds(10))
            }
        }
        ledger.archiver?.stop()
    }

    var description: String { "ledger-storage" }
}

/// Reloads the identity registry at each SIGHUP, until the shutdown.
struct IdentityReloadService: Service, CustomStringConvertible {
    let reload: IdentityReload
    let hangups: AsyncStream<Void>

    func run() async throws {
        await cancelWhenGracefulShutdown { await reload.run(hangups) }
    }

    var description: String { "identity-reload" }
}

/// The `/metrics` endpoint (started with the other start-up lines); stopped at the shutdown.
struct MetricsService: Service, CustomStringConvertible {
    let operations: Operations

    func run() async throws {
        try? await gracefulShutdown()
        await operations.stopMetrics()
    }

    var description: String { "metrics" }
}

/// The ledger and the broker's store: closed last, once nothing writes to them any more.
struct StorageService: Service, CustomStringConvertible {
    let ledger: any SessionAuthority
    let broker: Broker
    let operations: Operations
    let closed: ShutdownTally

    func run() async throws {
        try? await gracefulShutdown()
        operations.events.drain()
        broker.close()
        ledger.close()
        say("custody: stopped head=\(ledger.head.sequence) connections_closed=\(closed.connections) socket_connections_ended=\(closed.socketConnections)")
    }

    var description: String { "storage" }
}

/// What the front's shutdown closed, for the last line.
final class ShutdownTally: Sendable {
    private let count = Mutex(0)
    private let socketCount = Mutex(0)
    var connections: Int {
        get { count.withLock { $0 } }
        set { count.withLock { $0 = newValue } }
    }
    /// Those granted through the ledger socket.
    var socketConnections: Int {
        get { socketCount.withLock { $0 } }
        set { socketCount.withLock { $0 = newValue } }
    }
}

/// The service group: the first SIGTERM or SIGINT (from `terminationSignals`, whose second
/// signal exits at once) triggers its graceful shutdown; one that takes longer than `limit` is
/// cancelled (and the process ends through `ServiceGroup`'s cancellation limit at worst).
/// The group listens to no signal itself: custody's own sources count the signals.
func custodyServices(_ services: [any Service], logger: Logger, limit: Duration = .seconds(25)) -> ServiceGroup {
    var configuration = ServiceGroupConfiguration(
        services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }, logger: logger)
    configuration.maximumGracefulShutdownDuration = limit
    configuration.maximumCancellationDuration = .seconds(5)
    return ServiceGroup(configuration: configuration)
}
