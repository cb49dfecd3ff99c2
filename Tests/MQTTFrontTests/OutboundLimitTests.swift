import Foundation
import MQTTCodec
import NIOCore
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A QoS 0 subscriber that never reads no longer grows custody's memory (issue 15, defect 2):
/// above the outbound high-water mark (1 MiB) its QoS 0 messages are dropped and counted,
/// and after the slow-consumer timeout it is disconnected (0x97, `disconnected(quotaExceeded)`),
/// while a subscriber that reads gets every message.
/// The reading client, handed to the thread that reads it (and only it uses it from then on).
private final class ReaderBox: @unchecked Sendable {
    let client: RawClient
    init(_ client: RawClient) { self.client = client }
}

@Suite("Outbound high-water mark")
struct OutboundLimitTests {
    private func residentKiB(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }!
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])!
    }

    @Test func aStalledQoS0SubscriberIsBoundedAndDisconnectedWhileAReaderGetsEverything() async throws {
        try await offPool {
            let messages = 20_000
            try withCustody("high-water", ["--slow-consumer-seconds", "2", "--metrics", "127.0.0.1:0"]) { custody in
                let stalled = try RawClient(port: custody.port, receiveBuffer: 4096)
                #expect(try stalled.connect("stalled").reasonCode == .success)
                try stalled.send(.subscribe(MQTTSubscribe(
                    packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "flood/#")])))
                guard case .suback = try stalled.receive() else { throw E2EError.unexpected("no SUBACK") }

                let reader = try RawClient(port: custody.port)
                #expect(try reader.connect("reader").reasonCode == .success)
                try reader.send(.subscribe(MQTTSubscribe(
                    packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "flood/#")])))
                guard case .suback = try reader.receive() else { throw E2EError.unexpected("no SUBACK") }
                let received = Mutex(0)
                let readerDone = DispatchSemaphore(value: 0)
                let handOver = ReaderBox(reader)
                Thread {
                    defer { readerDone.signal() }
                    while let packet = try? handOver.client.receive(timeout: 30) {
                        guard case .publish = packet else { continue }
                        if received.withLock({ $0 += 1; return $0 }) == messages { return }
                    }
                }.start()

                let pid = custody.process.processIdentifier
                let before = try residentKiB(pid)
                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("publisher").reasonCode == .success)
                let payload = ByteBuffer(repeating: 0x62, count: 1024)
                var peak = before
                for id in 1...messages {
                    try publisher.send(.publish(MQTTPublish(
                        topicName: "flood/m", payload: payload, qos: .atLeastOnce, packetIdentifier: UInt16(id % 65_535 + 1))))
                    guard case .puback? = try publisher.receive(timeout: 20) else { throw E2EError.unexpected("no PUBACK \(id)") }
                    if id % 2_000 == 0 { peak = max(peak, try residentKiB(pid)) }
                }
                readerDone.wait()
                #expect(received.withLock { $0 } == messages, "the reader got every message")
                // Start + twice the high-water mark + 10 MiB: 20 MB were published to the stalled one.
                #expect(peak - before < 2 * 1024 + 10 * 1024, "RSS grew by \(peak - before) KiB")

                let end = try custody.waitForEvent(timeout: 20) {
                    $0.sessionName.value == "stalled" && $0.kind == .disconnected(.quotaExceeded)
                }
                #expect(end.authenticationName.value == "stalled")
                try custody.waitForLog("slow consumer", "session_name=stalled")
                let metrics = try run("/usr/bin/curl", ["-s", "http://\(try metricsAddress(custody))/metrics"]).1
                let dropped = metrics.split(separator: "\n").first {
                    $0.hasPrefix("custody_broker_messages_dropped_total{reason=\"slow_consumer\"}")
                }
                #expect(dropped.map { Int($0.split(separator: " ").last!)! > 1_000 } == true, "\(dropped ?? "no slow_consumer count")")
            }
        }
    }

    private func metricsAddress(_ custody: RunningCustody) throws -> String {
        guard let line = custody.stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: metrics http://") }) else {
            throw E2EError.unexpected("no metrics line: \(custody.stdout)")
        }
        return String(line.dropFirst("custody: metrics http://".count).dropLast("/metrics".count))
    }
}
