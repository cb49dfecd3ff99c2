import ArgumentParser
import Broker
import Foundation
import Logging
import MQTTFront
import NIOCore
import SessionLedger

extension ListenAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(parsing: argument) }
    public var defaultValueDescription: String { description }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

@main
struct Custody: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custody",
        abstract: "A durable MQTT broker whose session ownership lives in an event-sourced LMDB ledger.",
        discussion: """
            Opens (or creates) the session ledger in --data-dir, recovers it (sessions left \
            connected by a crash are recorded as disconnected by the restart; sessions whose \
            expiry passed meanwhile are expired), listens for MQTT 3.1.1 and 5.0 clients on every \
            --listen address and keeps expiring sessions as their deadlines pass, until SIGINT or \
            SIGTERM. Every CONNECT is decided by the ledger and answered once the decision is on disk.
            """)

    @Option(help: "Directory of the LMDB session ledger.")
    var dataDir: String = "./data"

    @Option(help: "Live sessions (connected or not yet expired) one authentication name may hold, 1-100.")
    var maxSessionsPerClient: Int = 10

    @Option(help: "Longest session expiry a client may ask for, in hours, 1-8.")
    var maxSessionExpiryHours: Int = 1

    @Option(help: "Largest size the ledger's data file may grow to, in MiB.")
    var ledgerMapSizeMib: Int = 65_536

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "MQTT listener as HOST:PORT (IPv6 as [HOST]:PORT; port 0 picks a free port). Repeatable; default 127.0.0.1:1883.",
            valueName: "host:port"))
    var listen: [ListenAddress] = []

    @Option(help: "Seconds a new connection may take to send its CONNECT, 1-3600.")
    var connectTimeoutSeconds: Int = 10

    @Option(help: "Least severe log level written to standard error: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        guard NamespacePolicy.sessionsPerClientRange.contains(maxSessionsPerClient) else {
            throw ValidationError("--max-sessions-per-client must be between 1 and 100, got \(maxSessionsPerClient)")
        }
        guard NamespacePolicy.expiryHoursRange.contains(maxSessionExpiryHours) else {
            throw ValidationError("--max-session-expiry-hours must be between 1 and 8, got \(maxSessionExpiryHours)")
        }
        guard (1...(1 << 24)).contains(ledgerMapSizeMib) else {
            throw ValidationError("--ledger-map-size-mib must be between 1 and \(1 << 24), got \(ledgerMapSizeMib)")
        }
        guard (1...3600).contains(connectTimeoutSeconds) else {
            throw ValidationError("--connect-timeout-seconds must be between 1 and 3600, got \(connectTimeoutSeconds)")
        }
    }

    func run() async throws {
        let policy = try NamespacePolicy(
            maximumClientSessionsPerAuthenticationName: maxSessionsPerClient,
            maximumSessionExpiryInHours: maxSessionExpiryHours)
        let ledger: SessionLedger
        do {
            ledger = try SessionLedger(
                directory: dataDir, policy: policy, options: LedgerStoreOptions(mapSize: ledgerMapSizeMib << 20))
        } catch {
            FileHandle.standardError.write(Data("custody: cannot open the ledger in \(dataDir): \(error)\n".utf8))
            throw ExitCode.failure
        }
        let recovery = ledger.recovery
        say("custody: ledger \(dataDir) head=\(recovery.head.sequence) hash=\(recovery.head.hash)")
        say("custody: recovered sessions disconnected_by_restart=\(recovery.disconnected.count) expired_while_down=\(recovery.expired.count)")
        say("custody: policy max_sessions_per_client=\(policy.maximumClientSessionsPerAuthenticationName) max_session_expiry_hours=\(policy.maximumSessionExpiryInHours)")
        let signals = terminationSignals()
        let brokerDirectory = (dataDir as NSString).appendingPathComponent("broker")
        let broker: Broker
        do {
            broker = try Broker(directory: brokerDirectory)
            // Sessions the ledger no longer holds (expired while down) lose their queues too.
            let live = try ledger.store.read { snapshot in
                var names = Set<SessionName>()
                try snapshot.forEachSession { name, _ in names.insert(name) }
                return names
            }
            try await broker.retainOnly(live: live)
        } catch {
            FileHandle.standardError.write(Data("custody: cannot open the broker store in \(brokerDirectory): \(error)\n".utf8))
            ledger.close()
            throw ExitCode.failure
        }
        say("custody: broker \(brokerDirectory) sessions=\(broker.sessionNames.count)")
        let level = logLevel
        let logger = Logger(label: "custody") { label in LineLogHandler(label: label, level: level) }
        let front = MQTTFront(
            ledger: ledger, pubsub: broker,
            configuration: MQTTFrontConfiguration(
                listeners: listen.isEmpty ? [.defaultMQTT] : listen,
                connectTimeout: .seconds(Int64(connectTimeoutSeconds))),
            logger: logger)
        let addresses: [ListenAddress]
        do {
            addresses = try await front.start()
        } catch {
            FileHandle.standardError.write(Data("custody: \(error)\n".utf8))
            await front.shutdown()
            broker.close()
            ledger.close()
            throw ExitCode.failure
        }
        for address in addresses { say("custody: listening mqtt \(address)") }
        let expiry = Task { await ledger.runExpiry { events in front.sessionsExpired(events) } }
        say("custody: running; SIGINT or SIGTERM stops")
        var signal = "end"
        for await name in signals {
            signal = name
            break
        }
        say("custody: \(signal) received, closing connections and the ledger")
        await front.shutdown()
        expiry.cancel()
        _ = await expiry.value
        broker.close()
        ledger.close()
        say("custody: stopped head=\(ledger.head.sequence)")
    }
}

/// Signal sources live as long as the process; kept here so they are not released.
nonisolated(unsafe) private var signalSources: [DispatchSourceSignal] = []

/// SIGINT and SIGTERM by name, handled from the moment this returns.
func terminationSignals() -> AsyncStream<String> {
    AsyncStream<String> { continuation in
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(name) }
            source.resume()
            signalSources.append(source)
        }
    }
}

/// One line to standard output, unbuffered: operators and supervisors read it as it happens.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
