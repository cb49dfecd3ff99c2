import ArgumentParser
import EtcdGateway
import Foundation
import Synchronization

/// etcd's own rate for the Txn a cluster claim makes (compare two absent keys, put both),
/// through the same JSON gateway client custody uses: the yardstick of the cluster benchmark.
struct EtcdTxnBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "etcd-txn",
        abstract: "Claim-shaped Txns (compare two keys absent, put both) against etcd's JSON gateway, N at once.",
        discussion: """
            Final line: etcd-txn: txns=N ok=N errors=E rate=R/s p50=Xus p99=Yus p999=Zus \
            bench_cpu_pct=P (this generator's share of one core). Keys go under \
            /custody-bench/RUN/, deleted at the end.
            """)

    @Option(help: "etcd client URLs, comma-separated.")
    var endpoints: String

    @Option(help: "Txns in flight at once.")
    var conns = 64

    @Option(help: "Run time in seconds.")
    var seconds = 5.0

    @Flag(help: "One JSON object instead of the summary lines.")
    var json = false

    /// What the workers share (Mutex and Atomic as stored properties, not captured locals).
    final class Tally: Sendable {
        let stats = Mutex(LatencyStats())
        let counter = Atomic<Int>(0)
    }

    func run() throws {
        // The gateway is async; this command waits for it on its own thread.
        let done = DispatchSemaphore(value: 0)
        let command = self
        Task {
            await command.measure()
            done.signal()
        }
        done.wait()
    }

    func measure() async {
        let gateway = EtcdGateway(endpoints: endpoints.split(separator: ",").map(String.init), connections: conns)
        let prefix = "/custody-bench/\(UInt32.random(in: 0...UInt32.max))/"
        let tally = Tally()
        let cpuBefore = processCPUMicroseconds()
        let started = ContinuousClock.now
        let stop = started + .milliseconds(Int64(seconds * 1000))
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<conns {
                group.addTask { [tally] in
                    while ContinuousClock.now < stop {
                        let index = tally.counter.add(1, ordering: .relaxed).newValue
                        let session = prefix + "s/\(index)"
                        let slot = prefix + "c/\(index % 1000)/\(index)"
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        do {
                            let result = try await gateway.txn(EtcdTxn(
                                compare: [.absent(session), .absent(slot)],
                                success: [.put(key: session, value: Data("{}".utf8)), .put(key: slot, value: Data(session.utf8))]))
                            let elapsed = DispatchTime.now().uptimeNanoseconds - t0
                            tally.stats.withLock { result.succeeded ? $0.success(nanoseconds: elapsed) : $0.error("compare_failed") }
                        } catch {
                            tally.stats.withLock { $0.error("unreachable") }
                        }
                    }
                }
            }
        }
        let elapsed = Double((ContinuousClock.now - started).components.attoseconds) / 1e18
            + Double((ContinuousClock.now - started).components.seconds)
        let cpu = Double(processCPUMicroseconds() - cpuBefore)
        _ = try? await gateway.delete(prefix, rangeEnd: prefixEnd(of: prefix))
        await gateway.shutdown()
        let final = tally.stats.withLock { $0 }
        var report = Report(mode: "etcd-txn")
        report.fields = [
            .int("txns", final.cycles), .int("ok", final.ok), .int("errors", final.errorCount),
            .rate("rate", Double(final.ok) / elapsed),
        ] + latencyFields(final) + [.number("bench_cpu_pct", cpu / (elapsed * 1e6) * 100)]
        report.details = [.int("conns", conns), .number("seconds", elapsed, digits: 2)]
        report.errors = final.errors
        report.print(json: json)
    }
}
