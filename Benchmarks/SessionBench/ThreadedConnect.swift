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
