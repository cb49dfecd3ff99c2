import ArgumentParser
import Foundation
import MQTTCodec
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Where the load goes: one broker.
struct TargetOptions: ParsableArguments {
    @Option(help: "Broker address (an IP address or localhost). Only loopback unless --allow-remote.")
    var host: String = "127.0.0.1"

    @Option(help: "Broker MQTT port.")
    var port: Int = 1883

    @Option(help: "The broker's process id: its CPU time (and, for hold, its RSS) is read from /proc during the run.")
    var pid: Int32?

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535, got \(port)") }
        if let pid { try BrokerProcess.check(pid: pid, flag: "--pid") }
    }
}

/// How much load, shared by every mode and by `compare`.
struct LoadOptions: ParsableArguments {
    @Option(help: "MQTT protocol level: 4 (3.1.1) or 5 (5.0).")
    var proto: Int = 5

    @Option(help: "Concurrent connections (for hold: connections to open and keep).")
    var conns: Int = 16

    @Option(help: "Run time in seconds: how long new cycles are started (hold: how long connections are kept).")
    var seconds: Double = 5

    @Option(help: "Stop after this many cycles (persistent: sessions, default 2000; takeover/reject: attempts).")
    var total: Int?

    @Option(help: "Distinct user names the sessions are spread over (default: enough that none holds more than 10 sessions at once, at least 8; connect gives each user a fixed group of at most 5 connections).")
    var users: Int?

    @Option(help: "Milliseconds to wait for TCP, CONNACK or an expected close before counting a timeout.")
    var timeoutMs: Int = 5000

    @Option(help: "Milliseconds to wait for the broker to close after DISCONNECT before closing ourselves.")
    var closeWaitMs: Int = 1000

    @Option(help: "hold: seconds between PINGREQs on each connection (the CONNECT keep-alive is 3x this, at least 10 s).")
    var pingSeconds: Double = 2

    @Option(help: "hold: connections being opened at once.")
    var window: Int = 64

    @Option(help: "Session name prefix (default: a random one, so runs never meet each other's sessions).")
    var prefix: String?

    @Option(help: "connect: generator threads, each with its own event loop and an equal share of --conns (on a machine the broker shares, more than one keeps the generator from being the bottleneck).")
    var threads: Int = 1

    @Flag(help: "Print one JSON object instead of the summary lines.")
    var json = false

    @Flag(help: "Allow a broker address that is not loopback.")
    var allowRemote = false

    @Option(help: "Every CONNECT carries this password (e.g. for an authentication webhook).")
    var password: String?

    @Option(help: "A file whose content (trailing newline dropped) every CONNECT carries: a token. With --auth-method (5.0 only) as Authentication Data, otherwise as the password; the CONNECTs then carry no Username (the token names the client).")
    var tokenFile: String?

    @Option(help: "With --token-file: the MQTT 5 Authentication Method (e.g. CUSTOM-JWT).")
    var authMethod: String?

    /// The token of `--token-file`, read once.
    func token() throws -> String? {
        guard let tokenFile else { return nil }
        let text = try String(contentsOfFile: tokenFile, encoding: .utf8)
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    var version: MQTTProtocolVersion { proto == 4 ? .mqtt3_1_1 : .mqtt5 }

    func validate() throws {
        guard proto == 4 || proto == 5 else { throw ValidationError("--proto must be 4 or 5, got \(proto)") }
        guard (1...100_000).contains(conns) else { throw ValidationError("--conns must be between 1 and 100000, got \(conns)") }
        guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be above 0 and at most 3600, got \(seconds)") }
        if let total, total < 1 { throw ValidationError("--total must be at least 1, got \(total)") }
        if let users, users < 1 { throw ValidationError("--users must be at least 1, got \(users)") }
        guard (1...600_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms must be between 1 and 600000, got \(timeoutMs)") }
        guard (0...600_000).contains(closeWaitMs) else { throw ValidationError("--close-wait-ms must be between 0 and 600000, got \(closeWaitMs)") }
        guard pingSeconds > 0, pingSeconds <= 3600 else { throw ValidationError("--ping-seconds must be above 0 and at most 3600, got \(pingSeconds)") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1, got \(window)") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be between 1 and 64, got \(threads)") }
        guard threads <= conns else { throw ValidationError("--threads (\(threads)) must not exceed --conns (\(conns))") }
        if authMethod != nil {
            guard tokenFile != nil else { throw ValidationError("--auth-method goes with --token-file") }
            guard proto == 5 else { throw ValidationError("--auth-method needs --proto 5") }
        }
        if tokenFile != nil && password != nil { throw ValidationError("--token-file or --password, not both") }
        if let tokenFile, (try? token()) == nil { throw ValidationError("--token-file: cannot read \(tokenFile)") }
        if let prefix {
            guard !prefix.isEmpty, prefix.utf8.count <= 40, prefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                throw ValidationError("--prefix must be 1-40 ASCII letters, digits, '-' or '_', got '\(prefix)'")
            }
        }
    }

    /// User names for `sessions` sessions live at once, at most 10 per user (Custody's default cap).
    func userCount(forLiveSessions sessions: Int) -> Int {
        users ?? max(8, (sessions + 9) / 10)
    }

    func sessionPrefix() -> String {
        if let prefix { return prefix }
        var generator = SystemRandomNumberGenerator()
        let random = UInt32.random(in: 0...UInt32.max, using: &generator)
        return "b" + String(random, radix: 16)
    }
}

/// Who publishes to whom in `publish`.
enum PublishShape: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// --conns publishers, one subscriber on a wildcard filter (every subscriber gets every message).
    case fanIn = "fan-in"
    /// One publisher, --conns subscribers on the same wildcard filter.
    case fanOut = "fan-out"
    /// A topic per subscriber: subscriber i subscribes to publisher (i mod P)'s topic only
    /// (--conns publishers and --conns subscribers unless --publishers/--subscribers say).
    case perTopic = "per-topic"
}

/// What `publish` sends, on top of `LoadOptions` (--conns is the many side of --shape).
struct PublishOptions: ParsableArguments {
    @Option(help: "QoS of every PUBLISH and subscription: 0, 1 or 2 (PUBREC, PUBREL, PUBCOMP both ways).")
    var qos: Int = 1

    @Option(help: "fan-in: --conns publishers and 1 subscriber; fan-out: 1 publisher and --conns subscribers (both on one wildcard filter: every subscriber gets every message); per-topic: --conns publishers and --conns subscribers, subscriber i on publisher (i mod P)'s topic only.")
    var shape: PublishShape = .fanIn

    @Option(help: "Publishers, instead of what --shape and --conns make (e.g. --publishers 8 --subscribers 8 --shape fan-in: every subscriber gets all 8 publishers' messages).")
    var publishers: Int?

    @Option(help: "Subscribers, instead of what --shape and --conns make.")
    var subscribers: Int?

    @Option(help: "Payload bytes of each message (at least 20: publisher, sequence number, send time).")
    var payloadBytes: Int = 64

    @Option(help: "QoS 1 and 2: PUBLISHes a publisher may have unacknowledged (Custody's Receive Maximum is 100).")
    var inflight: Int = 32

    @Option(help: "Messages the publishers together may be ahead of the slowest subscriber, shared out evenly (0: no limit). Keep it below the broker's queue per session (Custody and mosquitto: 1000), which drops even QoS 1 messages beyond it.")
    var maxAhead: Int = 500

    @Option(help: "Messages per second from all publishers together (0: as fast as --inflight and --max-ahead allow).")
    var rate: Double = 0

    @Option(help: "First topic level: publishers publish to ROOT/PREFIX/USER, subscribers subscribe to ROOT/PREFIX/+.")
    var topicRoot: String = "bench"

    @Option(help: "After --seconds, milliseconds with nothing arriving before what is missing counts as lost.")
    var drainMs: Int = 2000

    @Flag(help: "Subscribers hold persistent sessions (5.0: Session Expiry 1 h; 3.1.1: clean session 0): every QoS 1 message to them is stored before its PUBACK.")
    var persistentSubscribers = false

    @Option(help: "A cluster: the MQTT ports of other nodes on the same host, comma-separated; subscriber i connects to the i-th port of --port followed by these, round robin (publishers to --port). Messages then cross nodes.")
    var subscriberPorts: String?

    /// --subscriber-ports, parsed (empty: every subscriber on --port).
    func otherPorts() throws -> [Int] {
        guard let subscriberPorts else { return [] }
        let ports = subscriberPorts.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !ports.isEmpty, ports.allSatisfy({ $0.map { (1...65535).contains($0) } ?? false }) else {
            throw ValidationError("--subscriber-ports must be ports (1-65535), comma-separated, got '\(subscriberPorts)'")
        }
        return ports.compactMap { $0 }
    }

    var qosLevel: MQTTQoS { MQTTQoS(rawValue: UInt8(qos)) ?? .atLeastOnce }

    func validate() throws {
        guard (0...2).contains(qos) else { throw ValidationError("--qos must be 0, 1 or 2, got \(qos)") }
        guard (20...65_536).contains(payloadBytes) else {
            throw ValidationError("--payload-bytes must be between 20 and 65536, got \(payloadBytes)")
        }
        guard (1...65_535).contains(inflight) else { throw ValidationError("--inflight must be between 1 and 65535, got \(inflight)") }
        guard maxAhead >= 0 else { throw ValidationError("--max-ahead must be 0 or more, got \(maxAhead)") }
        guard rate >= 0, rate.isFinite else { throw ValidationError("--rate must be 0 or more, got \(rate)") }
        guard !topicRoot.isEmpty, topicRoot.utf8.count <= 100,
            !topicRoot.contains(where: { $0 == "/" || $0 == "+" || $0 == "#" || $0 == "\0" }), !topicRoot.hasPrefix("$")
        else {
            throw ValidationError("--topic-root must be one topic level (no '/', '+', '#', leading '$'), 1-100 bytes, got '\(topicRoot)'")
        }
        guard (1...600_000).contains(drainMs) else { throw ValidationError("--drain-ms must be between 1 and 600000, got \(drainMs)") }
        if let publishers, !(1...10_000).contains(publishers) {
            throw ValidationError("--publishers must be between 1 and 10000, got \(publishers)")
        }
        if let subscribers, !(1...10_000).contains(subscribers) {
            throw ValidationError("--subscribers must be between 1 and 10000, got \(subscribers)")
        }
        _ = try otherPorts()
    }
}

/// A broker address, checked: an IP literal or localhost, loopback unless allowed otherwise.
enum BrokerAddress {
    static func resolve(host: String, port: Int, allowRemote: Bool, flag: String = "--host") throws -> SocketAddress {
        let literal = host == "localhost" ? "127.0.0.1" : host
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: literal, port: port)
        } catch {
            guard allowRemote else {
                throw ValidationError("\(flag) \(host) is not a loopback address; custody-bench only loads 127.0.0.0/8, ::1 or localhost unless --allow-remote is given")
            }
            do {
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            } catch {
                throw ValidationError("\(flag) \(host) cannot be resolved: \(error)")
            }
        }
        if !allowRemote, !isLoopback(address) {
            throw ValidationError("\(flag) \(host) is not a loopback address; custody-bench only loads 127.0.0.0/8, ::1 or localhost unless --allow-remote is given")
        }
        return address
    }

    static func isLoopback(_ address: SocketAddress) -> Bool {
        switch address {
        case .v4: return address.ipAddress?.hasPrefix("127.") == true
        case .v6: return address.ipAddress == "::1"
        default: return false
        }
    }
}

/// The broker's CPU and memory from /proc (Linux).
enum BrokerProcess {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func check(pid: Int32, flag: String) throws {
        guard pid > 0, cpuTicks(pid: pid) != nil else {
            throw ValidationError("\(flag) \(pid): no such process (cannot read /proc/\(pid)/stat)")
        }
    }

    static func readFile(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after the
    /// command name, which may itself hold spaces and parentheses).
    static func cpuTicks(pid: Int32) -> UInt64? {
        guard let stat = readFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3), so utime (field 14) is fields[11].
        guard fields.count > 12, let user = UInt64(fields[11]), let system = UInt64(fields[12]) else { return nil }
        return user + system
    }

    /// VmRSS in KiB.
    static func residentKiB(pid: Int32) -> Int? {
        guard let status = readFile("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }

    static func cpuMicroseconds(ticks: UInt64) -> Double { Double(ticks) * 1e6 / ticksPerSecond }
}

/// The generator's own CPU, to show it is cheap.
func ownCPUMicroseconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

/// Raises the open-file limit to its hard limit: hold opens thousands of sockets.
func raiseFileLimit() {
    var limit = rlimit()
    if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
}

/// CPU of the broker (if a pid was given) and of the generator over one measured stretch.
struct CPUSample {
    let brokerTicks: UInt64?
    let own: Double
    /// CPU microseconds of the thread that took the sample (an engine's loop).
    let thread: Double
    let at: UInt64

    init(pid: Int32?) {
        brokerTicks = pid.flatMap { BrokerProcess.cpuTicks(pid: $0) }
        own = ownCPUMicroseconds()
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        thread = Double(time.tv_sec) * 1e6 + Double(time.tv_nsec) / 1e3
        at = monotonicNanoseconds()
    }

    /// Broker CPU microseconds since `start`, nil without a pid.
    func brokerMicroseconds(since start: CPUSample) -> Double? {
        guard let now = brokerTicks, let then = start.brokerTicks else { return nil }
        return BrokerProcess.cpuMicroseconds(ticks: now &- then)
    }

    func ownMicroseconds(since start: CPUSample) -> Double { own - start.own }
    func seconds(since start: CPUSample) -> Double { Double(at &- start.at) / 1e9 }
}

/// Fixed-point text without Foundation.
func fixed(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = value < 0
    let scaled = (abs(value) * scale).rounded()
    guard scaled < 9.0e18 else { return String(value) }
    let integer = UInt64(scaled)
    let whole = integer / UInt64(scale)
    var text = (negative ? "-" : "") + String(whole)
    if digits > 0 {
        var fraction = String(integer % UInt64(scale))
        while fraction.count < digits { fraction = "0" + fraction }
        text += "." + fraction
    }
    return text
}
