import CustodyTesting
import Foundation
import Testing

// The real `custody-bench` binary against a real mosquitto (and, where it listens, the real
// `custody`) on 127.0.0.1. Each broker gets its own temporary directory and a free port.

private func product(_ name: String) throws -> URL { try builtProduct(name) }

/// Debian's mosquitto with persistence on, logging only errors and warnings, on a free
/// loopback port.
private func benchMosquitto() throws -> RunningMosquitto {
    try RunningMosquitto("bench", lines: ["allow_anonymous true"], persistence: true, logEverything: false)
}

extension RunningCustody {
    var pid: Int32 { process.processIdentifier }
    var log: String { stdout + stderr }
}

struct BenchRun {
    let status: Int32
    let stdout: String
    let stderr: String
    var lines: [Substring] { stdout.split(separator: "\n") }
    var finalLine: String { lines.last.map(String.init) ?? "" }

    /// key=value pairs of the final line (units kept as printed).
    var summary: [String: String] {
        var result: [String: String] = [:]
        for part in finalLine.split(separator: " ").dropFirst() {
            let pair = part.split(separator: "=", maxSplits: 1)
            if pair.count == 2 { result[String(pair[0])] = String(pair[1]) }
        }
        return result
    }

    func int(_ key: String) -> Int? { summary[key].flatMap { Int($0) } }

    var errorsByReason: [String: Int] {
        guard let line = lines.first(where: { $0.contains(": errors_by_reason ") }) else { return [:] }
        var result: [String: Int] = [:]
        for part in line.split(separator: " ").dropFirst(2) {
            let pair = part.split(separator: "=")
            if pair.count == 2, let count = Int(pair[1]) { result[String(pair[0])] = count }
        }
        return result
    }
}

/// Runs `custody-bench` to the end, within `limit` seconds.
private func bench(_ arguments: [String], limit: TimeInterval = 60) throws -> BenchRun {
    let process = Process()
    process.executableURL = try product("custody-bench")
    process.arguments = arguments
    let directory = URL(fileURLWithPath: scratchDirectory("bench-run"))
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let out = directory.appendingPathComponent("out"), err = directory.appendingPathComponent("err")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    _ = FileManager.default.createFile(atPath: err.path, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: out)
    process.standardError = try FileHandle(forWritingTo: err)
    try process.run()
    let deadline = Date().addingTimeInterval(limit)
    while process.isRunning, Date() < deadline { usleep(20_000) }
    if process.isRunning {
        process.terminate()
        Issue.record("custody-bench \(arguments) ran over \(limit) s")
    }
    process.waitUntilExit()
    return BenchRun(
        status: process.terminationStatus,
        stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
}

/// The exact shape of connect's final line.
private var connectLine: Regex<(Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring?, Substring, Substring)> {
    #/^connect: cycles=(\d+) ok=(\d+) errors=(\d+) rate=(\d+\.\d)/s p50=(\d+)us p99=(\d+)us p999=(\d+)us( cpu_us_per_cycle=\d+\.\d)? bench_cpu_us_per_cycle=(\d+\.\d) bench_cpu_pct=(\d+\.\d)$/#
}

/// The exact shape of publish's final line.
private var publishLine: Regex<(Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring, Substring?)> {
    #/^publish: published=(\d+) delivered=(\d+) lost=(\d+) duplicates=(\d+) errors=(\d+) rate=(\d+\.\d)/s p50=(\d+)us p99=(\d+)us p999=(\d+)us bench_cpu_pct=(\d+\.\d)( cpu_us_per_msg=\d+\.\d\d)?$/#
}

/// Runs `publish` for about a second and checks what every run must show: a well-formed
/// summary, messages delivered, none twice, no errors, and for QoS 1 nothing lost. At 2,000
/// PUBLISHes a second, so that the other suites running meanwhile keep their share of the CPU.
private func checkPublish(
    port: Int, pid: Int32, qos: Int, shape: String, proto: Int, conns: Int, extra: [String] = [],
    deliveriesPerMessage: Int? = nil
) throws {
    let run = try bench([
        "publish", "--port", "\(port)", "--pid", "\(pid)", "--qos", "\(qos)", "--shape", shape, "--proto", "\(proto)",
        "--conns", "\(conns)", "--seconds", "1", "--rate", "2000",
    ] + extra)
    #expect(run.status == 0, "\(run.stderr)")
    let match = try #require(try publishLine.wholeMatch(in: run.finalLine), "final line: \(run.stdout)\n\(run.stderr)")
    let published = Int(match.output.1)!, delivered = Int(match.output.2)!, lost = Int(match.output.3)!
    let subscribers = deliveriesPerMessage ?? (shape == "fan-out" ? conns : 1)
    #expect(published > 0)
    #expect(delivered > 0, "\(run.stdout)")
    #expect(delivered + lost == published * subscribers, "every message sent is delivered or lost: \(run.stdout)")
    #expect(Int(match.output.4) == 0, "no duplicates")
    #expect(Int(match.output.5) == 0, "no errors: \(run.stdout)")
    #expect(run.errorsByReason.isEmpty)
    if qos >= 1 {
        #expect(lost == 0, "QoS \(qos) loses nothing: \(run.stdout)")
        #expect(run.lines.contains { $0.contains(" drained=1 ") }, "every acknowledged message arrived: \(run.stdout)")
    }
    let p50 = Int(match.output.7)!, p99 = Int(match.output.8)!, p999 = Int(match.output.9)!
    #expect(0 < p50 && p50 <= p99 && p99 <= p999)
    #expect(Double(match.output.10)! > 0, "the generator's CPU share")
    #expect(match.output.11 != nil, "--pid gives cpu_us_per_msg")
}

@Suite("custody-bench against real brokers", .serialized)
struct SessionBenchTests {
    @Test("connect for 1 s: a well-formed summary, ok > 0, no errors", arguments: [4, 5])
    func connectAgainstMosquitto(proto: Int) async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench([
                "connect", "--port", "\(mosquitto.port)", "--conns", "4", "--seconds", "1", "--proto", "\(proto)",
                "--pid", "\(mosquitto.pid)",
            ])
            #expect(run.status == 0, "\(run.stderr)")
            let match = try #require(try connectLine.wholeMatch(in: run.finalLine), "final line: \(run.finalLine)")
            let cycles = Int(match.output.1)!, ok = Int(match.output.2)!, errors = Int(match.output.3)!
            #expect(ok > 0)
            #expect(errors == 0, "\(run.stdout)")
            #expect(cycles == ok + errors)
            let p50 = Int(match.output.5)!, p99 = Int(match.output.6)!, p999 = Int(match.output.7)!
            #expect(0 < p50 && p50 <= p99 && p99 <= p999)
            #expect(match.output.8 != nil, "--pid gives cpu_us_per_cycle")
            // The generator's own CPU beside it: positive, and a share of one core.
            let ownPerCycle = Double(match.output.9)!, ownShare = Double(match.output.10)!
            #expect(ownPerCycle > 0 && ownShare > 0 && ownShare <= 100, "\(run.finalLine)")
            // The rate is successes over about one second.
            let rate = Double(match.output.4)!
            #expect(rate > Double(ok) / 3 && rate < Double(ok) * 2)
        }
    }

    @Test("connect --threads 2: both threads' cycles in one summary, with the busiest thread's CPU share")
    func connectWithTwoThreads() async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench([
                "connect", "--port", "\(mosquitto.port)", "--conns", "4", "--seconds", "1", "--threads", "2",
                "--pid", "\(mosquitto.pid)", "--prefix", "two",
            ])
            #expect(run.status == 0, "\(run.stderr)")
            let fields = run.summary
            #expect(fields["bench_threads"] == "2", "\(run.finalLine)")
            let ok = try #require(run.int("ok")), cycles = try #require(run.int("cycles"))
            #expect(ok > 0 && cycles == ok && run.int("errors") == 0, "\(run.stdout)")
            // Each thread's share of a core is at most 100, and together at most the total.
            let busiest = try #require(fields["bench_busiest_thread_pct"].flatMap(Double.init))
            let total = try #require(fields["bench_cpu_pct"].flatMap(Double.init))
            #expect(busiest > 0 && busiest <= 100 && busiest <= total + 1, "\(run.finalLine)")
            // Each thread has its own users (at least 8 for its 2 connections) and session names:
            // mosquitto took no session over (that would have been an error above).
            let detail = try #require(run.lines.first { $0.hasPrefix("connect: detail ") })
            #expect(detail.contains(" users=16 "), "\(detail)")
        }
    }

    @Test("persistent: every reconnect finds its session (session present = 1)", arguments: [4, 5])
    func persistentAgainstMosquitto(proto: Int) async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench([
                "persistent", "--port", "\(mosquitto.port)", "--conns", "8", "--total", "300", "--proto", "\(proto)",
                "--seconds", "20",
            ])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.finalLine.hasPrefix("persistent: sessions=300 created=300 resumed=300 errors=0 "), "\(run.stdout)")
            #expect(run.errorsByReason.isEmpty)
        }
    }

    @Test("reject: mosquitto takes sessions over instead of refusing; counted as errors, never as successes")
    func rejectAgainstMosquittoCountsTakeovers() async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench(["reject", "--port", "\(mosquitto.port)", "--conns", "2", "--seconds", "1", "--proto", "5"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.int("rejected") == 0, "\(run.stdout)")
            #expect((run.int("errors") ?? 0) > 0)
            #expect((run.errorsByReason["accepted_takeover"] ?? 0) > 0, "\(run.stdout)")
        }
    }

    /// mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E; the count says so.
    @Test("takeover: second CONNACK and the old connection closed", arguments: [4, 5])
    func takeoverAgainstMosquitto(proto: Int) async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench(["takeover", "--port", "\(mosquitto.port)", "--conns", "2", "--seconds", "1", "--proto", "\(proto)"])
            #expect(run.status == 0, "\(run.stderr)")
            let ok = try #require(run.int("ok"), "\(run.stdout)")
            #expect(ok > 0)
            #expect(run.int("errors") == 0, "\(run.stdout)")
            let heard = try #require(run.int("disconnect_0x8e"))
            #expect(heard <= ok)
            #expect((run.summary["old_close_p99"]?.dropLast(2)).flatMap { Int($0) } ?? 0 > 0)
        }
    }

    @Test("hold: connections kept with PINGREQ, RSS read from /proc")
    func holdAgainstMosquitto() async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench([
                "hold", "--port", "\(mosquitto.port)", "--conns", "50", "--seconds", "1.5", "--ping-seconds", "0.5",
                "--pid", "\(mosquitto.pid)",
            ])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.int("held") == 50, "\(run.stdout)")
            #expect(run.int("errors") == 0)
            #expect((run.int("pongs") ?? 0) >= 50)
            #expect(run.int("pongs") == run.int("pings"))
            #expect((run.int("rss_after_kib") ?? 0) > 0)
        }
    }

    /// When messages for the subscriber wait in its queue behind the 20 in flight, mosquitto
    /// 2.0.11 leaves some acknowledged QoS 1 messages undelivered (Benchmarks/RESULTS.md); with
    /// publishers at most 16 messages ahead of the subscriber, none wait. QoS 2 runs PUBREC,
    /// PUBREL and PUBCOMP both ways.
    @Test("publish QoS 1 and 2 fan-in for 1 s against mosquitto: every acknowledged message delivered", arguments: [1, 2])
    func publishAgainstMosquitto(qos: Int) throws {
        let mosquitto = try benchMosquitto()
        defer { mosquitto.cleanUp() }
        try checkPublish(
            port: mosquitto.port, pid: mosquitto.pid, qos: qos, shape: "fan-in", proto: 5, conns: 4, extra: ["--max-ahead", "16"])
    }

    /// The issue's shapes: P publishers and S subscribers, every subscriber on everything
    /// (each message delivered S times), or a topic per subscriber (each delivered once).
    @Test("publish with --publishers and --subscribers: fan-in to all, and a topic per subscriber", arguments: ["fan-in", "per-topic"])
    func publishersAndSubscribers(shape: String) async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            try checkPublish(
                port: mosquitto.port, pid: mosquitto.pid, qos: 1, shape: shape, proto: 5, conns: 1,
                extra: ["--publishers", "3", "--subscribers", "3", "--max-ahead", "16"],
                deliveriesPerMessage: shape == "fan-in" ? 3 : 1)
        }
    }

    @Test("a closed port: every cycle is an error by reason (refused), none a success")
    func closedPortCountsRefusals() async throws {
        try await offPool {
            let port = try freeLoopbackPort()
            let run = try bench(["connect", "--port", "\(port)", "--conns", "1", "--total", "20", "--seconds", "2"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.int("ok") == 0, "\(run.stdout)")
            #expect(run.int("errors") == 20)
            #expect(run.errorsByReason == ["refused": 20], "\(run.stdout)")
        }
    }

    @Test("--json prints one JSON object")
    func jsonOutput() async throws {
        try await offPool {
            let mosquitto = try benchMosquitto()
            defer { mosquitto.cleanUp() }
            let run = try bench(["connect", "--port", "\(mosquitto.port)", "--conns", "2", "--total", "50", "--json"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.lines.count == 1)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
            #expect(object["mode"] as? String == "connect")
            #expect(object["ok"] as? Int == 50)
            #expect(object["errors"] as? Int == 0)
            #expect(object["p99"] is Int)
        }
    }

    @Test("compare: two brokers, rounds alternating, ratio per round and median")
    func compareTwoMosquittos() async throws {
        try await offPool {
            let a = try benchMosquitto()
            defer { a.cleanUp() }
            let b = try benchMosquitto()
            defer { b.cleanUp() }
            let run = try bench([
                "compare", "--broker", "a=127.0.0.1:\(a.port)", "--broker", "b=127.0.0.1:\(b.port)",
                "--pid", "a=\(a.pid)", "--pid", "b=\(b.pid)", "--mode", "connect", "--rounds", "2",
                "--seconds", "0.5", "--conns", "2", "--pause-ms", "0",
            ])
            #expect(run.status == 0, "\(run.stderr)")
            let runs = run.lines.filter { $0.contains(" broker=") && $0.contains(" connect: cycles=") }
            #expect(runs.map { $0.split(separator: " ")[2] } == ["broker=a", "broker=b", "broker=b", "broker=a"])
            #expect(run.lines.filter { $0.contains("a/b rate_ratio=") && $0.contains("cpu_ratio=") }.count == 2)
            #expect(run.finalLine.hasPrefix("compare: mode=connect proto=5 conns=2 rounds=2 "))
            #expect(run.summary["a/b_rate_ratio_median"].flatMap(Double.init) != nil, "\(run.stdout)")
        }
    }

    @Test("a non-loopback host is refused before any connection", arguments: [
        ["connect", "--host", "10.1.2.3", "--seconds", "1"],
        ["hold", "--host", "example.com"],
        ["compare", "--broker", "a=127.0.0.1:1883", "--broker", "b=192.168.7.7:1883"],
    ])
    func nonLoopbackRefused(arguments: [String]) async throws {
        try await offPool {
            let started = Date()
            let run = try bench(arguments)
            #expect(run.status != 0)
            #expect(run.stderr.contains("not a loopback address"), "\(run.stderr)")
            #expect(run.stderr.contains("--allow-remote"))
            #expect(run.stdout.isEmpty)
            #expect(Date().timeIntervalSince(started) < 5)
        }
    }

    @Test("bad flags exit non-zero, naming the flag", arguments: [
        (["connect", "--conns", "0"], "--conns"),
        (["connect", "--proto", "3"], "--proto"),
        (["connect", "--seconds", "-1"], "--seconds"),
        (["connect", "--bogus"], "--bogus"),
        (["connect", "--port", "70000"], "--port"),
        (["connect", "--threads", "0"], "--threads"),
        (["connect", "--conns", "2", "--threads", "3"], "--threads"),
        (["persistent", "--threads", "2"], "--threads"),
        (["persistent", "--users", "0"], "--users"),
        (["compare", "--broker", "a=127.0.0.1:1883"], "--broker"),
        (["compare", "--broker", "a=127.0.0.1:1883", "--broker", "b=127.0.0.1:1884", "--rounds", "0"], "--rounds"),
        (["connect", "--pid", "999999999"], "--pid"),
        (["publish", "--qos", "3"], "--qos"),
        (["publish", "--shape", "ring"], "--shape"),
        (["publish", "--payload-bytes", "19"], "--payload-bytes"),
        (["publish", "--topic-root", "a/b"], "--topic-root"),
    ])
    func badFlag(arguments: [String], flag: String) async throws {
        try await offPool {
            let run = try bench(arguments)
            #expect(run.status != 0)
            #expect(run.stderr.contains(flag), "\(run.stderr)")
            #expect(run.stdout.isEmpty)
        }
    }

    @Test("against custody: connect, persistent, takeover and reject (refused with 0x87 / 5)", arguments: [4, 5])
    func againstCustody(proto: Int) async throws {
        try await offPool {
            // The bench reconnects the same session names many times a second: no connect rate limit.
            let custody = try RunningCustody(
                "bench", arguments: ["--max-sessions-per-client", "100", "--connects-per-second-per-session", "0"])
            defer { custody.cleanUp() }
            let connect = try bench([
                "connect", "--port", "\(custody.port)", "--conns", "4", "--seconds", "1", "--proto", "\(proto)", "--pid", "\(custody.pid)",
            ])
            #expect(try connectLine.wholeMatch(in: connect.finalLine) != nil, "\(connect.stdout)\n\(custody.log)")
            #expect((connect.int("ok") ?? 0) > 0)
            #expect(connect.int("errors") == 0, "\(connect.stdout)")

            let persistent = try bench([
                "persistent", "--port", "\(custody.port)", "--conns", "4", "--total", "100", "--proto", "\(proto)", "--seconds", "20",
            ])
            #expect(persistent.finalLine.hasPrefix("persistent: sessions=100 created=100 resumed=100 errors=0 "), "\(persistent.stdout)")

            let takeover = try bench(["takeover", "--port", "\(custody.port)", "--conns", "2", "--seconds", "1", "--proto", "\(proto)"])
            let takeovers = try #require(takeover.int("ok"), "\(takeover.stdout)")
            #expect(takeovers > 0)
            #expect(takeover.int("errors") == 0, "\(takeover.stdout)")
            if proto == 5 { #expect(takeover.int("disconnect_0x8e") == takeovers, "R4: the old connection hears 0x8E") }

            let reject = try bench(["reject", "--port", "\(custody.port)", "--conns", "2", "--seconds", "1", "--proto", "\(proto)"])
            #expect((reject.int("rejected") ?? 0) > 0, "\(reject.stdout)")
            #expect(reject.int("errors") == 0, "\(reject.stdout)")
        }
    }

    @Test("publish against custody for 1 s: QoS 0, 1 and 2, fan-in and fan-out, both protocols", arguments: [
        (1, "fan-in", 5), (1, "fan-out", 4), (0, "fan-in", 4), (0, "fan-out", 5), (2, "fan-in", 5), (2, "fan-out", 4),
    ])
    func publishAgainstCustody(qos: Int, shape: String, proto: Int) throws {
        // Four runs one after another reuse the same session names within a second.
        let custody = try RunningCustody(
            "bench-publish", arguments: ["--connects-per-second-per-session", "0"])
        defer { custody.cleanUp() }
        do {
            try checkPublish(port: custody.port, pid: custody.pid, qos: qos, shape: shape, proto: proto, conns: 4)
        } catch {
            Issue.record("custody log:\n\(custody.log)")
            throw error
        }
    }

    /// Every QoS 1 message to a persistent subscriber is stored before its PUBACK; none lost.
    @Test("publish QoS 1 to persistent subscribers, a topic each, against custody: nothing lost", arguments: [4, 5])
    func publishToPersistentSubscribers(proto: Int) async throws {
        try await offPool {
            let custody = try RunningCustody("bench-persistent", arguments: ["--connects-per-second-per-session", "0"])
            defer { custody.cleanUp() }
            do {
                try checkPublish(
                    port: custody.port, pid: custody.pid, qos: 1, shape: "per-topic", proto: proto, conns: 2,
                    extra: ["--persistent-subscribers"], deliveriesPerMessage: 1)
            } catch {
                Issue.record("custody log:\n\(custody.log)")
                throw error
            }
        }
    }
}
