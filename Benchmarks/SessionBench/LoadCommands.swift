import ArgumentParser
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The session-throughput modes, run against one broker.
enum LoadModeName: String, ExpressibleByArgument, CaseIterable, Sendable {
    case connect, persistent, takeover, reject, hold
}

/// Runs one mode against one broker on a fresh single-threaded event loop.
func runLoad(_ mode: LoadModeName, address: SocketAddress, pid: Int32?, load: LoadOptions) throws -> Report {
    raiseFileLimit()
    if load.threads > 1 {
        guard mode == .connect else { throw ValidationError("--threads is for connect only, not \(mode.rawValue)") }
        return try runThreadedConnect(address: address, pid: pid, load: load)
    }
    let engine = try LoadEngine(
        address: address, version: load.version, timeoutMilliseconds: load.timeoutMs,
        closeWaitMilliseconds: load.closeWaitMs)
    // Every mode stops starting work after its time; this bound only catches a broker that
    // stops answering altogether (every connection still open is then closed and counted).
    let passes: Double = mode == .persistent ? 3 : (mode == .hold ? 2 : 1)
    let hardLimit = load.seconds * passes + Double(load.timeoutMs) / 1000 * 3 + Double(load.closeWaitMs) / 1000 * 2 + 60
    return try engine.run(hardLimitSeconds: hardLimit) { engine, promise in
        switch mode {
        case .connect: ConnectMode(engine: engine, load: load, pid: pid, promise: promise).start()
        case .persistent: PersistentMode(engine: engine, load: load, pid: pid, promise: promise).start()
        case .takeover: TakeoverMode(engine: engine, load: load, pid: pid, promise: promise).start()
        case .reject: RejectMode(engine: engine, load: load, pid: pid, promise: promise).start()
        case .hold: HoldMode(engine: engine, load: load, pid: pid, promise: promise).start()
        }
    }
}

/// Runs `publish` against one broker on a fresh single-threaded event loop.
func runPublish(address: SocketAddress, pid: Int32?, load: LoadOptions, publish: PublishOptions) throws -> Report {
    raiseFileLimit()
    guard load.threads == 1 else { throw ValidationError("--threads is for connect only, not publish") }
    let engine = try LoadEngine(
        address: address, version: load.version, timeoutMilliseconds: load.timeoutMs,
        closeWaitMilliseconds: load.closeWaitMs)
    // Setup (CONNACK and SUBACK timeouts), the run, the drain and the closes; beyond that the
    // broker has stopped answering.
    let hardLimit = load.seconds + Double(publish.drainMs) / 1000 + Double(load.timeoutMs) / 1000 * 4
        + Double(load.closeWaitMs) / 1000 * 2 + 60
    return try engine.run(hardLimitSeconds: hardLimit) { engine, promise in
        PublishMode(engine: engine, load: load, publish: publish, pid: pid, promise: promise).start()
    }
}

/// The shape of every single-broker subcommand.
protocol LoadCommand: ParsableCommand {
    static var mode: LoadModeName { get }
    var target: TargetOptions { get }
    var load: LoadOptions { get }
}

extension LoadCommand {
    func validate() throws {
        _ = try BrokerAddress.resolve(host: target.host, port: target.port, allowRemote: load.allowRemote)
    }

    func run() throws {
        let address = try BrokerAddress.resolve(host: target.host, port: target.port, allowRemote: load.allowRemote)
        let report = try runLoad(Self.mode, address: address, pid: target.pid, load: load)
        report.print(json: load.json)
    }
}

struct ConnectLoad: LoadCommand {
    static let mode = LoadModeName.connect
    static let configuration = CommandConfiguration(
        commandName: "connect",
        abstract: "Connection cycles: each connection loops open, CONNECT (clean start, unique session), CONNACK, DISCONNECT, close.",
        discussion: """
            Final line: connect: cycles=N ok=N errors=E rate=R/s p50=Xus p99=Yus p999=Zus \
            [cpu_us_per_cycle=C] bench_cpu_us_per_cycle=G bench_cpu_pct=P. rate counts \
            successful cycles only; latencies are from starting TCP to the CONNACK; \
            cpu_us_per_cycle is the broker's CPU (--pid) per cycle, bench_cpu_us_per_cycle this \
            generator's, and bench_cpu_pct its share of one core (near 100: the generator, not \
            the broker, sets the rate). persistent, takeover and reject end the same way.
            """)
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
}

struct PersistentLoad: LoadCommand {
    static let mode = LoadModeName.persistent
    static let configuration = CommandConfiguration(
        commandName: "persistent",
        abstract: "Creates --total persistent sessions (default 2000), reconnects to each and requires session present = 1.",
        discussion: """
            Sessions use clean start 0 (5.0: Session Expiry Interval 3600). Each pass stops \
            starting sessions after --seconds. A third, unmeasured pass ends the sessions.
            """)
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
}

struct TakeoverLoad: LoadCommand {
    static let mode = LoadModeName.takeover
    static let configuration = CommandConfiguration(
        commandName: "takeover",
        abstract: "The same identity connects twice to one session: second CONNACK latency and the old connection's close (5.0: DISCONNECT 0x8E).")
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
}

struct RejectLoad: LoadCommand {
    static let mode = LoadModeName.reject
    static let configuration = CommandConfiguration(
        commandName: "reject",
        abstract: "Another identity claims live sessions; each claim must be refused (5.0: 0x87, 3.1.1: 5).",
        discussion: "A broker without session ownership takes the session over instead: that counts as accepted_takeover errors.")
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
}

struct HoldLoad: LoadCommand {
    static let mode = LoadModeName.hold
    static let configuration = CommandConfiguration(
        commandName: "hold",
        abstract: "Opens --conns connections and keeps them with PINGREQ for --seconds; with --pid the broker's RSS and bytes per connection.")
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
}

struct PublishLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Message throughput: --conns publishers to 1 subscriber (fan-in) or 1 publisher to --conns subscribers (fan-out), QoS 0 or 1.",
        discussion: """
            Subscribers subscribe to ROOT/PREFIX/+ (clean start), then publishers publish to \
            ROOT/PREFIX/USER for --seconds; afterwards the run waits for what is still on the \
            way (at most --drain-ms of silence); --total stops it after that many PUBLISHes. \
            Final line: publish: published=N delivered=D \
            lost=L duplicates=X errors=E rate=R/s p50=Xus p99=Yus p999=Zus bench_cpu_pct=G \
            [cpu_us_per_msg=C]. delivered and rate count messages received by subscribers (a \
            fan-out message counts once per subscriber); lost is what a subscriber that stayed \
            connected never got of the messages sent (QoS 0) or acknowledged (QoS 1); latencies \
            are from the PUBLISH being written to its delivery; bench_cpu_pct is this generator's \
            CPU as a share of one core (near 100: the generator, not the broker, sets the rate); \
            cpu_us_per_msg is the broker's CPU (--pid) per delivered message.
            """)
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
    @OptionGroup var publish: PublishOptions

    func validate() throws {
        _ = try BrokerAddress.resolve(host: target.host, port: target.port, allowRemote: load.allowRemote)
    }

    func run() throws {
        let address = try BrokerAddress.resolve(host: target.host, port: target.port, allowRemote: load.allowRemote)
        let report = try runPublish(address: address, pid: target.pid, load: load, publish: publish)
        report.print(json: load.json)
    }
}

/// The same load against several brokers in turn, rounds alternating the order.
struct CompareLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Runs one mode against each broker in turn (order alternating by round); ratios per round and their median.",
        discussion: """
            Ratios are the first --broker over each other one: rate ratio above 1 means the \
            first is faster; p99 and CPU ratios below 1 mean the first is quicker / cheaper.
            """)

    @Option(name: .customLong("broker"), help: "NAME=HOST:PORT, at least two (e.g. custody=127.0.0.1:1883).")
    var brokers: [String] = []

    @Option(help: "The mode to run: \(LoadModeName.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mode: LoadModeName = .connect

    @Option(name: .customLong("pid"), help: "NAME=PID of a broker, for its CPU (and RSS in hold).")
    var pids: [String] = []

    @Option(help: "Rounds; each runs every broker once.")
    var rounds: Int = 3

    @Option(help: "Milliseconds to pause between runs.")
    var pauseMs: Int = 500

    @OptionGroup var load: LoadOptions

    struct Broker {
        let name: String
        let address: SocketAddress
        var pid: Int32?
    }

    func parsedBrokers() throws -> [Broker] {
        var result: [Broker] = []
        for text in brokers {
            guard let equals = text.firstIndex(of: "="), let colon = text.lastIndex(of: ":"), equals < colon else {
                throw ValidationError("--broker must be NAME=HOST:PORT, got '\(text)'")
            }
            let name = String(text[..<equals])
            var host = String(text[text.index(after: equals)..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                throw ValidationError("--broker name must be letters, digits, '-' or '_', got '\(name)'")
            }
            guard let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
                throw ValidationError("--broker \(name): the port must be 1-65535, got '\(text[text.index(after: colon)...])'")
            }
            guard !result.contains(where: { $0.name == name }) else { throw ValidationError("--broker \(name) is given twice") }
            let address = try BrokerAddress.resolve(host: host, port: port, allowRemote: load.allowRemote, flag: "--broker \(name)=")
            result.append(Broker(name: name, address: address))
        }
        guard result.count >= 2 else { throw ValidationError("--broker must be given at least twice (NAME=HOST:PORT), got \(result.count)") }
        for text in pids {
            let parts = text.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let pid = Int32(parts[1]) else { throw ValidationError("--pid must be NAME=PID, got '\(text)'") }
            guard let index = result.firstIndex(where: { $0.name == parts[0] }) else {
                throw ValidationError("--pid \(parts[0]): no --broker of that name")
            }
            try BrokerProcess.check(pid: pid, flag: "--pid \(parts[0])=")
            result[index].pid = pid
        }
        return result
    }

    func validate() throws {
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be between 1 and 100, got \(rounds)") }
        guard (0...60_000).contains(pauseMs) else { throw ValidationError("--pause-ms must be between 0 and 60000, got \(pauseMs)") }
        _ = try parsedBrokers()
    }

    func run() throws {
        let brokers = try parsedBrokers()
        let first = brokers[0]
        var runsJSON: [String] = []
        var ratiosJSON: [String] = []
        // [other broker name]: per-round ratios.
        var rateRatios: [String: [Double]] = [:]
        var p99Ratios: [String: [Double]] = [:]
        var cpuRatios: [String: [Double]] = [:]
        var rates: [String: [Double]] = [:]
        var p99s: [String: [Double]] = [:]

        for round in 1...rounds {
            let order = round % 2 == 1 ? brokers : brokers.reversed()
            var reports: [String: Report] = [:]
            for broker in order {
                var roundLoad = load
                if let prefix = load.prefix { roundLoad.prefix = prefix + "r" + String(round) + broker.name.prefix(4) }
                let report = try runLoad(mode, address: broker.address, pid: broker.pid, load: roundLoad)
                reports[broker.name] = report
                rates[broker.name, default: []].append(report.rate)
                p99s[broker.name, default: []].append(Double(report.p99))
                if load.json {
                    runsJSON.append("{\"round\":\(round),\"broker\":\(jsonString(broker.name)),\"report\":\(report.json)}")
                } else {
                    if let errorLine = report.errorLine { print("compare: round=\(round) broker=\(broker.name) \(errorLine)") }
                    print("compare: round=\(round) broker=\(broker.name) \(report.summaryLine)")
                }
                if pauseMs > 0 { usleep(UInt32(pauseMs) * 1000) }
            }
            let base = reports[first.name]!
            for other in brokers.dropFirst() {
                let report = reports[other.name]!
                let rate = ratio(base.rate, report.rate)
                let p99 = ratio(Double(base.p99), Double(report.p99))
                rateRatios[other.name, default: []].append(rate)
                p99Ratios[other.name, default: []].append(p99)
                var line = "compare: round=\(round) \(first.name)/\(other.name) rate_ratio=\(format(rate)) p99_ratio=\(format(p99))"
                var json = "{\"round\":\(round),\"pair\":\(jsonString(first.name + "/" + other.name)),\"rate_ratio\":\(jsonNumber(rate)),\"p99_ratio\":\(jsonNumber(p99))"
                if let a = base.brokerCPUPerCycle, let b = report.brokerCPUPerCycle {
                    let cpu = ratio(a, b)
                    cpuRatios[other.name, default: []].append(cpu)
                    line += " cpu_ratio=\(format(cpu))"
                    json += ",\"cpu_ratio\":\(jsonNumber(cpu))"
                }
                ratiosJSON.append(json + "}")
                if !load.json { print(line) }
            }
        }

        var summary: [String] = ["mode=\(mode.rawValue)", "proto=\(load.proto)", "conns=\(load.conns)", "rounds=\(rounds)"]
        var summaryJSON: [String] = []
        for broker in brokers {
            summary.append("\(broker.name)_rate=\(fixed(median(rates[broker.name] ?? []), 1))/s")
            summary.append("\(broker.name)_p99=\(fixed(median(p99s[broker.name] ?? []), 0))us")
            summaryJSON.append("\(jsonString(broker.name + "_rate")):\(jsonNumber(median(rates[broker.name] ?? [])))")
            summaryJSON.append("\(jsonString(broker.name + "_p99")):\(jsonNumber(median(p99s[broker.name] ?? [])))")
        }
        for other in brokers.dropFirst() {
            let pair = first.name + "/" + other.name
            summary.append("\(pair)_rate_ratio_median=\(format(median(rateRatios[other.name] ?? [])))")
            summary.append("\(pair)_p99_ratio_median=\(format(median(p99Ratios[other.name] ?? [])))")
            summaryJSON.append("\(jsonString(pair + "_rate_ratio_median")):\(jsonNumber(median(rateRatios[other.name] ?? [])))")
            summaryJSON.append("\(jsonString(pair + "_p99_ratio_median")):\(jsonNumber(median(p99Ratios[other.name] ?? [])))")
            if let cpu = cpuRatios[other.name], !cpu.isEmpty {
                summary.append("\(pair)_cpu_ratio_median=\(format(median(cpu)))")
                summaryJSON.append("\(jsonString(pair + "_cpu_ratio_median")):\(jsonNumber(median(cpu)))")
            }
        }
        if load.json {
            print("{\"mode\":\"compare\",\"load_mode\":\(jsonString(mode.rawValue)),\"proto\":\(load.proto),\"conns\":\(load.conns),\"rounds\":\(rounds),"
                + "\"runs\":[\(runsJSON.joined(separator: ","))],\"ratios\":[\(ratiosJSON.joined(separator: ","))],"
                + "\"median\":{\(summaryJSON.joined(separator: ","))}}")
        } else {
            print("compare: " + summary.joined(separator: " "))
        }
    }

    private func ratio(_ a: Double, _ b: Double) -> Double { b == 0 ? (a == 0 ? .nan : .infinity) : a / b }
    private func format(_ value: Double) -> String { value.isFinite ? fixed(value, 3) : "n/a" }
    private func jsonNumber(_ value: Double) -> String { value.isFinite ? fixed(value, 3) : "null" }
}

func median(_ values: [Double]) -> Double {
    let finite = values.filter(\.isFinite).sorted()
    guard !finite.isEmpty else { return .nan }
    let middle = finite.count / 2
    return finite.count % 2 == 1 ? finite[middle] : (finite[middle - 1] + finite[middle]) / 2
}
