import Foundation
import MQTTCodec
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A client made in one `offPool` call and used in later ones (by one of them at a time).
private final class Handed: @unchecked Sendable {
    let client: RawClient
    init(_ client: RawClient) { self.client = client }
}

/// A QoS 0 subscriber that never reads no longer grows custody's memory (issue 15, defect 2):
/// above the outbound high-water mark (1 MiB) its QoS 0 messages are dropped and counted,
/// and after the slow-consumer timeout it is disconnected (0x97, `disconnected(quotaExceeded)`),
/// while a subscriber that reads gets every message.
@Suite("Outbound high-water mark")
struct OutboundLimitTests {
    private func residentKiB(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }!
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])!
    }

    @Test func aStalledQoS0SubscriberIsBoundedAndDisconnectedWhileAReaderGetsEverything() async throws {
        let custody = try await offPool {
            try RunningCustody("high-water", arguments: ["--slow-consumer-seconds", "2", "--metrics", "127.0.0.1:0"])
        }
        // As `withCustody`, with the blocking parts off the pool: custody's output goes into the
        // test's issues when it fails, and its stop (which waits for it to end) is off the pool too.
        do {
            try await flood(custody)
        } catch {
            Issue.record("custody output:\n\(custody.stdout)\ncustody log:\n\(custody.stderr)")
            try await offPool { custody.cleanUp() }
            throw error
        }
        try await offPool { custody.cleanUp() }
    }

    /// The reader reads on a thread of its own beside the publisher's (`offPool(_:beside:)`):
    /// both belong to the test, and what the reader got is returned to it and expected there.
    private func flood(_ custody: RunningCustody) async throws {
        let messages = 20_000
        let (stalled, reader) = try await offPool { () throws -> (Handed, Handed) in
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
            return (Handed(stalled), Handed(reader))
        }
        let pid = custody.process.processIdentifier
        let (received, (before, peak, publisher)) = try await offPool({ () -> Int in
            var received = 0
            while let packet = try? reader.client.receive(timeout: 30) {
                guard case .publish = packet else { continue }
                received += 1
                if received == messages { break }
            }
            return received
        }, beside: { () throws -> (Int, Int, Handed) in
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
            return (before, peak, Handed(publisher))
        })
        #expect(received == messages, "the reader got every message")
        // Start + twice the high-water mark + 10 MiB: 20 MB were published to the stalled one.
        #expect(peak - before < 2 * 1024 + 10 * 1024, "RSS grew by \(peak - before) KiB")

        try await offPool {
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
        // The clients stay connected until here (the stalled one unread).
        withExtendedLifetime((stalled, reader, publisher)) {}
    }

    private func metricsAddress(_ custody: RunningCustody) throws -> String {
        guard let line = custody.stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: metrics http://") }) else {
            throw E2EError.unexpected("no metrics line: \(custody.stdout)")
        }
        return String(line.dropFirst("custody: metrics http://".count).dropLast("/metrics".count))
    }
}
