import ArgumentParser
import Foundation
import NATSClient
import NIOCore
import Synchronization

/// A single nats-server's own publish rate, through the same NATS client custody's cluster
/// uses: the yardstick of the cluster's message benchmark. `core`: one publisher, one
/// subscriber, at most --inflight messages published and not yet received (end-to-end
/// latency); `jetstream`: publishes acknowledged by JetStream into a file stream (R1), --inflight
/// at once (latency: publish to ack).
struct NATSPublishBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nats-publish",
        abstract: "nats-server's own publish rate: core NATS end to end, or JetStream acknowledged publishes.",
        discussion: """
            Final line: nats-publish: messages=N rate=R/s p50=Xus p99=Yus p999=Zus bench_cpu_pct=P \
            (this generator's share of one core). The jetstream mode makes a stream BENCH_<random> \
            and deletes it at the end.
            """)

    @Option(help: "A NATS server URL (nats://host:port).")
    var url: String

    @Option(help: "core or jetstream.")
    var mode = "core"

    @Option(help: "Payload bytes of each message (at least 8: the send time).")
    var payloadBytes = 64

    @Option(help: "Messages published and not yet received (core) or acknowledged (jetstream).")
    var inflight = 256

    @Option(help: "Run time in seconds.")
    var seconds = 5.0

    @Flag(help: "One JSON object instead of the summary lines.")
    var json = false

    func validate() throws {
        guard NATSServer(url: url) != nil else { throw ValidationError("--url must be nats://host:port, got '\(url)'") }
        guard mode == "core" || mode == "jetstream" else { throw ValidationError("--mode must be core or jetstream, got '\(mode)'") }
        guard (8...1_000_000).contains(payloadBytes) else { throw ValidationError("--payload-bytes must be between 8 and 1000000") }
        guard (1...100_000).contains(inflight) else { throw ValidationError("--inflight must be between 1 and 100000") }
    }

    final class Tally: Sendable {
        let stats = Mutex(LatencyStats())
        let received = Atomic<Int>(0)
    }

    func run() throws {
        let done = DispatchSemaphore(value: 0)
        let command = self
        let failure = Mutex<Error?>(nil)
        Task {
            do { try await command.measure() } catch { failure.withLock { $0 = error } }
            done.signal()
        }
        done.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }

    func payload() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(monotonicNanoseconds())
        buffer.writeRepeatingByte(0, count: payloadBytes - 8)
        return buffer
    }

    func measure() async throws {
        let server = NATSServer(url: url)!
        let publisher = try await NATSConnection.connect(NATSOptions(servers: [server], name: "bench-pub"))
        let tally = Tally()
        let cpuBefore = processCPUMicroseconds()
        let started = ContinuousClock.now
        let stop = started + .milliseconds(Int64(seconds * 1000))
        var cleanup: (@Sendable () async -> Void)?
        if mode == "core" {
            let subscriber = try await NATSConnection.connect(NATSOptions(servers: [server], name: "bench-sub"))
            try subscriber.subscribe("bench.core") { [tally] message in
                let sent = message.payload.getInteger(at: message.payload.readerIndex, as: UInt64.self) ?? 0
                tally.stats.withLock { $0.success(nanoseconds: monotonicNanoseconds() &- sent) }
                tally.received.add(1, ordering: .relaxed)
            }
            try await subscriber.flush()
            var sent = 0
            while ContinuousClock.now < stop {
                if sent - tally.received.load(ordering: .relaxed) >= inflight {
                    try await Task.sleep(nanoseconds: 20_000)
                    continue
                }
                try publisher.publish("bench.core", payload: payload())
                sent += 1
            }
            for _ in 0..<200 where tally.received.load(ordering: .relaxed) < sent { try await Task.sleep(nanoseconds: 10_000_000) }
            cleanup = { await subscriber.close() }
        } else {
            let js = JetStream(publisher)
            let name = "BENCH_\(UInt32.random(in: 0...UInt32.max))"
            _ = try await js.ensureStream(StreamConfig(name: name, subjects: ["bench.\(name)"]))
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<inflight {
                    group.addTask { [tally] in
                        while ContinuousClock.now < stop {
                            let t0 = monotonicNanoseconds()
                            do {
                                _ = try await js.publish("bench.\(name)", payload: payload())
                                tally.stats.withLock { $0.success(nanoseconds: monotonicNanoseconds() &- t0) }
                            } catch {
                                tally.stats.withLock { $0.error("publish_failed") }
                            }
                        }
                    }
                }
            }
            cleanup = { try? await js.deleteStream(name) }
        }
        let elapsed = Double((ContinuousClock.now - started).components.attoseconds) / 1e18
            + Double((ContinuousClock.now - started).components.seconds)
        let cpu = Double(processCPUMicroseconds() - cpuBefore)
        await cleanup?()
        await publisher.close()
        let final = tally.stats.withLock { $0 }
        var report = Report(mode: "nats-publish")
        report.fields = [.int("messages", final.ok), .int("errors", final.errorCount), .rate("rate", Double(final.ok) / elapsed)]
            + latencyFields(final) + [.number("bench_cpu_pct", cpu / (elapsed * 1e6) * 100)]
        report.details = [
            .string("mode", mode), .int("payload_bytes", payloadBytes), .int("inflight", inflight),
            .number("seconds", elapsed, digits: 2),
        ]
        report.errors = final.errors
        report.print(json: json)
    }
}
