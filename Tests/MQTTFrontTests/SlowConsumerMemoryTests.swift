import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The slow-consumer check of issue 15, at its full size: a QoS 0 subscriber that never
/// reads, a publisher of 200,000 messages of 1 KiB, and a second subscriber that reads. The
/// broker's anonymous memory (RssAnon: LMDB's mapped files do not count) stays below its
/// start + twice the outbound high-water mark (1 MiB) + 10 MiB, the reader gets every
/// message, and the stalled one is disconnected once it has been above the mark for
/// `--slow-consumer-seconds` (2 s here). Benchmarks/slow-consumer-soak.py runs the same
/// scenario for longer against any running custody and prints RSS over time.
@Suite("Limits end to end: a stalled subscriber and 200,000 messages")
struct SlowConsumerMemoryTests {
    static let messages = 200_000

    /// What the publisher and the reader share: how many messages the reader has.
    private final class Progress: Sendable {
        let received = Atomic<Int>(0)
    }

    /// A client handed to the one task that uses it from then on.
    private final class Handed: @unchecked Sendable {
        let client: RawClient
        init(_ client: RawClient) { self.client = client }
    }

    @Test func aStalledSubscriberCostsAtMostTwiceTheHighWaterMark() async throws {
        let custody = try await offPool {
            try RunningCustody("slow-200k", arguments: ["--slow-consumer-seconds", "2", "--metrics", "127.0.0.1:0"])
        }
        // custody's stop waits for it to end: off the pool too, whatever happens.
        do {
            try await run(custody)
        } catch {
            Issue.record("custody output:\n\(custody.stdout)\ncustody log:\n\(custody.stderr)")
            try await offPool { custody.cleanUp() }
            throw error
        }
        try await offPool { custody.cleanUp() }
    }

    private func run(_ custody: RunningCustody) async throws {
        let pid = custody.process.processIdentifier
        // Set up: the stalled subscriber (a 4 KiB receive buffer it never empties) and the reader.
        let (reader, start) = try await offPool { () throws -> (Handed, Int) in
            let stalled = try RawClient(port: custody.port, receiveBuffer: 4096)
            #expect(try stalled.connect("stalled").reasonCode == .success)
            try subscribe(stalled, "flood/#", .atMostOnce)
            try subscribe(stalled, "late", .atMostOnce, id: 2)
            let reader = try RawClient(port: custody.port)
            #expect(try reader.connect("reader").reasonCode == .success)
            try subscribe(reader, "flood/#", .atMostOnce)
            // Kept open (never read) until the test ends: held by the box below.
            StalledHolder.shared.keep(stalled)
            return (Handed(reader), try anonymousKiB(pid))
        }
        let progress = Progress()
        let total = Self.messages
        // The reader reads as fast as it can, on a thread of its own beside the publisher's.
        // Every packet it gets is the same PUBLISH: it counts bytes rather than decoding 200,000
        // packets (which in a debug build would take a core from the tests running beside this one).
        let size = try MQTTEncoder(protocolVersion: .mqtt5).encodedSize(
            of: .publish(MQTTPublish(topicName: "flood/m", payload: ByteBuffer(repeating: 0x62, count: 1024))))
        let (received, peak) = try await offPool({ () throws -> Int in
            var bytes = 0
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while bytes < total * size {
                var ready = pollfd(fd: reader.client.fd, events: Int16(POLLIN), revents: 0)
                guard poll(&ready, 1, 30_000) > 0 else { throw E2EError.timeout("the flood, at \(bytes / size)") }
                let count = buffer.withUnsafeMutableBytes { recv(reader.client.fd, $0.baseAddress, $0.count, 0) }
                guard count > 0 else { break }
                bytes += count
                progress.received.store(bytes / size, ordering: .relaxed)
            }
            #expect(bytes % size == 0, "nothing but the flood's PUBLISHes (\(size) bytes each)")
            return bytes / size
        }, beside: { () throws -> Int in
            // The publisher: 250 messages per write, never more than 2,000 ahead of the reader, so
            // that only the stalled subscriber falls behind (the reader's own backlog stays far
            // below the mark). QoS 0 needs no acknowledgement: TCP carries the back-pressure.
            let publisher = try RawClient(port: custody.port)
            #expect(try publisher.connect("publisher").reasonCode == .success)
            var one = ByteBuffer()
            _ = try MQTTEncoder(protocolVersion: .mqtt5).encode(
                .publish(MQTTPublish(topicName: "flood/m", payload: ByteBuffer(repeating: 0x62, count: 1024))), into: &one)
            let chunk = Array(repeating: Array(one.readableBytesView), count: 250).flatMap { $0 }
            var peak = 0
            var sent = 0
            let deadline = Date().addingTimeInterval(60)
            while sent < total {
                while sent - progress.received.load(ordering: .relaxed) > 2_000 {
                    guard Date() < deadline else { throw E2EError.timeout("the reader, at \(progress.received.load(ordering: .relaxed))") }
                    usleep(200)
                }
                try publisher.sendRaw(chunk)
                sent += 250
                if sent % 10_000 == 0 { peak = max(peak, try anonymousKiB(pid)) }
            }
            // The stalled subscriber's timeout is checked when a message for it arrives.
            let late = Date().addingTimeInterval(15)
            while try custody.events().contains(where: { $0.sessionName.value == "stalled" && $0.kind == .disconnected(.quotaExceeded) }) == false,
                Date() < late
            {
                try publisher.send(.publish(MQTTPublish(topicName: "late", payload: ByteBuffer(string: "tick"))))
                usleep(200_000)
            }
            return max(peak, try anonymousKiB(pid))
        })
        #expect(received == total, "the reader got every message")
        let allowed = 2 * 1024 + 10 * 1024
        #expect(peak - start < allowed, "RssAnon grew by \(peak - start) KiB (start \(start) KiB)")
        try await offPool {
            let end = try custody.waitForEvent(timeout: 5) {
                $0.sessionName.value == "stalled" && $0.kind == .disconnected(.quotaExceeded)
            }
            #expect(end.authenticationName.value == "stalled")
            #expect(try custody.events().contains { $0.sessionName.value == "reader" && $0.kind.name == "disconnected" } == false)
            let metrics = try scrape(custody)
            // Dropped while it stayed above the mark, until its disconnection 2 s later.
            #expect((value(metrics, #"custody_broker_messages_dropped_total{reason="slow_consumer"}"#) ?? 0) > 1_000)
            print("slow consumer: RssAnon start \(start) KiB, peak \(peak) KiB (+\(peak - start) KiB, allowed +\(allowed) KiB)")
        }
        StalledHolder.shared.release()
    }
}

/// Anonymous resident memory of a process (heap, stacks; not mapped files), KiB.
func anonymousKiB(_ pid: Int32) throws -> Int {
    let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("RssAnon:") }),
        let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
    else { throw E2EError.unexpected("no RssAnon in /proc/\(pid)/status") }
    return kib
}

/// Keeps the stalled client's socket open (and unread) until the test lets it go.
private final class StalledHolder: @unchecked Sendable {
    static let shared = StalledHolder()
    private let lock = NSLock()
    private var clients: [RawClient] = []
    func keep(_ client: RawClient) { lock.lock(); clients.append(client); lock.unlock() }
    func release() { lock.lock(); clients.removeAll(); lock.unlock() }
}
