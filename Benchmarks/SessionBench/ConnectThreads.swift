import ArgumentParser
import Foundation
import NIOCore
import Synchronization

/// `connect --threads N`: N engines, each on an event loop thread of its own, each with an
/// equal share of the connections and its own session-name prefix, started together. Their
/// cycles and latencies make one report (see `connectReport`), which also says how busy the
/// busiest generator thread was: a single-threaded generator on a 2-core machine that the
/// broker shares is saturated before a single-threaded broker like Mosquitto is.
func runThreadedConnect(address: SocketAddress, pid: Int32?, load: LoadOptions) throws -> Report {
    let prefix = load.sessionPrefix()
    let threads = load.threads
    let collected = ThreadResults(count: threads)
    let group = DispatchGroup()
    for index in 0..<threads {
        var share = load
        share.conns = load.conns / threads + (index < load.conns % threads ? 1 : 0)
        share.total = load.total.map { max(1, $0 / threads + (index < $0 % threads ? 1 : 0)) }
        share.prefix = prefix + "t" + String(index)
        share.threads = 1
        let load = share
        group.enter()
        let thread = Thread {
            collected.set(index, Result { try runLoad(.connect, address: address, pid: pid, load: load) })
            group.leave()
        }
        thread.name = "custody-bench-\(index)"
        thread.start()
    }
    group.wait()
    let parts = try collected.all().map { report in
        guard let part = report.connectPart else { throw ValidationError("connect: a generator thread returned no figures") }
        return part
    }
    return connectReport(parts, load: load, prefix: prefix)
}

/// The threads' reports, each set once by its own thread.
private final class ThreadResults: Sendable {
    private let results: Mutex<[Result<Report, any Error>?]>

    init(count: Int) { results = Mutex(Array(repeating: nil, count: count)) }

    func set(_ index: Int, _ result: Result<Report, any Error>) { results.withLock { $0[index] = result } }

    func all() throws -> [Report] { try results.withLock { $0 }.map { try $0!.get() } }
}

/// What one connect pass measured, raw, so that passes on several threads make one report.
struct ConnectPart: Sendable {
    var stats: LatencyStats
    var start: CPUSample
    var end: CPUSample
    var lateCloses: Int
    var users: Int
}

/// connect's report over one or more passes run at the same time (one per generator thread):
/// their cycles and latencies together, over the span from the first start to the last end.
func connectReport(_ parts: [ConnectPart], load: LoadOptions, prefix: String) -> Report {
    var stats = LatencyStats()
    for part in parts {
        stats.histogram.add(part.stats.histogram)
        stats.ok += part.stats.ok
        stats.errors.merge(part.stats.errors, uniquingKeysWith: +)
    }
    let start = parts.min { $0.start.at < $1.start.at }!.start
    let end = parts.max { $0.end.at < $1.end.at }!.end
    let seconds = max(end.seconds(since: start), 1e-9)
    let rate = Double(stats.ok) / seconds
    let own = end.ownMicroseconds(since: start)
    // The busiest generator thread's share of a core: near 100, the generator sets the rate.
    let busiest = parts.map { ($0.end.thread - $0.start.thread) / 1e4 / max($0.end.seconds(since: $0.start), 1e-9) }.max()!
    var report = Report(mode: "connect")
    report.fields = [.int("cycles", stats.cycles), .int("ok", stats.ok), .int("errors", stats.errorCount), .rate("rate", rate)]
        + latencyFields(stats)
    report.brokerCPUPerCycle = end.brokerMicroseconds(since: start).map { $0 / Double(max(stats.cycles, 1)) }
    if let cpu = report.brokerCPUPerCycle { report.fields.append(.number("cpu_us_per_cycle", cpu)) }
    report.fields += [
        .number("bench_cpu_us_per_cycle", own / Double(max(stats.cycles, 1))),
        .number("bench_cpu_pct", own / 1e4 / seconds),
    ]
    if parts.count > 1 {
        report.fields += [.int("bench_threads", parts.count), .number("bench_busiest_thread_pct", busiest)]
    }
    report.details = [
        .int("proto", load.proto), .int("conns", load.conns), .number("seconds", load.seconds),
        .int("users", parts.map(\.users).reduce(0, +)), .string("prefix", prefix),
        .number("elapsed_s", seconds, digits: 3),
    ]
    if let broker = end.brokerMicroseconds(since: start) {
        report.details.append(.number("broker_cpu_us", broker, digits: 0))
        report.details.append(.number("broker_cpu_pct", broker / 1e4 / seconds))
    }
    report.details.append(.int("late_closes", parts.map(\.lateCloses).reduce(0, +)))
    report.errors = stats.errors
    report.rate = rate
    report.p99 = stats.percentile(99)
    return report
}
