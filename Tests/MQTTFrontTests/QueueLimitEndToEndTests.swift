import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

/// A session's queue over 127.0.0.1 against `custody` (issue 15): `queueMaxMessages` with
/// `queueOverflow: dropOldest` keeps the newest messages of an offline persistent session and
/// says how many went in /metrics; with `endSession` the session ends as Event Grid ends it.
/// Other clients of the same broker get everything meanwhile.
@Suite("Limits end to end: session queues")
struct QueueLimitEndToEndTests {
    @Test func anOfflineSessionKeepsTheNewestThousandOfFiveThousand() async throws {
        try await offPool {
            // "device" may come back within a second of its first CONNECT.
            try withCustody("queue-drop", ["--metrics", "127.0.0.1:0", "--connects-per-second-per-session", "0"]) { custody in
                // The device subscribes at QoS 1 and goes away; its session stays (an hour).
                let device = try RawClient(port: custody.port)
                #expect(try device.connect("device", clean: true, expiry: 3_600).reasonCode == .success)
                try subscribe(device, "telemetry/#", .atLeastOnce)
                try device.send(.disconnect(MQTTDisconnect()))
                _ = try device.receiveUntilClosed()
                // Another offline session with a queue of its own, and a client that stays.
                let calm = try RawClient(port: custody.port)
                #expect(try calm.connect("calm", clean: true, expiry: 3_600).reasonCode == .success)
                try subscribe(calm, "calm/#", .atLeastOnce)
                try calm.send(.disconnect(MQTTDisconnect()))
                _ = try calm.receiveUntilClosed()
                let watcher = try RawClient(port: custody.port)
                #expect(try watcher.connect("watcher").reasonCode == .success)
                try subscribe(watcher, "#", .atMostOnce)

                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("publisher").reasonCode == .success)
                let floodStarted = Date()
                try publish(publisher, (1...5_000).map { ("telemetry/t", "\($0)") })
                try publish(publisher, (1...5).map { ("calm/c", "calm \($0)") })

                // The watcher, online all along, got every message.
                var seen = 0
                while seen < 5_005, case .publish? = try watcher.receive(timeout: 20) { seen += 1 }
                #expect(seen == 5_005)

                // /metrics: 4,000 dropped from full queues, counted against queueMaxMessages.
                let metrics = try scrape(custody)
                #expect(value(metrics, #"custody_broker_messages_dropped_total{reason="queue_full"}"#) == 4_000)
                #expect(value(metrics, #"custody_limit_exceeded_total{limit="queueMaxMessages"}"#) == 4_000)
                #expect(value(metrics, "custody_broker_messages_queued") == 1_005)
                // Logged, but not 4,000 times.
                try custody.waitForLog("limit exceeded", "limit=queueMaxMessages", "session_name=device")
                let lines = custody.stderr.split(separator: "\n").filter { $0.contains("limit=queueMaxMessages") }
                // At most 10 a 10-second window: a loaded machine may spread the drops over several.
                let windows = Int(Date().timeIntervalSince(floodStarted) / 10) + 2
                #expect(lines.count <= 10 * windows, "\(lines.count) log lines for 4,000 drops in \(windows) windows")

                // Back: exactly the newest 1,000, in order, then nothing.
                let returned = try RawClient(port: custody.port)
                #expect(try returned.connect("device", clean: false, expiry: 3_600).sessionPresent)
                #expect(try receiveAll(returned, count: 1_000) == (4_001...5_000).map { "\($0)" })
                #expect(throws: E2EError.self, "nothing after them") { try returned.receive(timeout: 0.5) }
                let back = try RawClient(port: custody.port)
                #expect(try back.connect("calm", clean: false, expiry: 3_600).sessionPresent)
                #expect(try receiveAll(back, count: 5) == (1...5).map { "calm \($0)" })
            }
        }
    }

    /// `queueOverflow: endSession`: one message past the limit ends the session, offline or
    /// connected: the ledger records `expired(sessionOverflow)` (after the connection's
    /// `disconnected(sessionOverflow)`), a connected client gets DISCONNECT 0x97, and the
    /// session comes back empty.
    @Test func endSessionEndsOfflineAndConnectedSessionsAsEventGridDoes() async throws {
        try await offPool {
            try withCustody("queue-end", [
                "--queue-overflow", "endSession", "--queue-max-messages", "10", "--metrics", "127.0.0.1:0",
                // "device" comes back within a second of its first CONNECT.
                "--connects-per-second-per-session", "0",
            ]) { custody in
                let device = try RawClient(port: custody.port)
                #expect(try device.connect("device", clean: true, expiry: 3_600).reasonCode == .success)
                try subscribe(device, "dev/#", .atLeastOnce)
                try device.send(.disconnect(MQTTDisconnect()))
                _ = try device.receiveUntilClosed()
                // Connected, Receive Maximum 2, and never acknowledging: 2 in flight, the rest queued.
                let slow = try RawClient(port: custody.port)
                try slow.send(.connect(MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "slow", cleanStart: true, keepAlive: 60,
                    properties: [.sessionExpiryInterval(3_600), .receiveMaximum(2)])))
                guard case .connack(let connack)? = try slow.receive(), connack.reasonCode == .success else {
                    throw E2EError.unexpected("slow not connected")
                }
                try subscribe(slow, "slow/#", .atLeastOnce)
                let watcher = try RawClient(port: custody.port)
                #expect(try watcher.connect("watcher").reasonCode == .success)
                try subscribe(watcher, "#", .atMostOnce)
                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("publisher").reasonCode == .success)

                // At the limit: both sessions live on.
                try publish(publisher, (1...10).map { ("dev/d", "\($0)") })
                try publish(publisher, (1...12).map { ("slow/s", "\($0)") })
                func overflowed(_ name: String) throws -> [LedgerEventKind] {
                    try custody.events().filter { $0.sessionName.value == name && $0.kind.reasonName == "sessionOverflow" }
                        .map(\.kind)
                }
                #expect(try overflowed("device").isEmpty && overflowed("slow").isEmpty)

                // One past it.
                try publish(publisher, [("dev/d", "11"), ("slow/s", "13")])
                try custody.waitForEvent { $0.sessionName.value == "device" && $0.kind == .expired(.sessionOverflow) }
                try custody.waitForEvent { $0.sessionName.value == "slow" && $0.kind == .expired(.sessionOverflow) }
                #expect(try overflowed("device") == [.expired(.sessionOverflow)])
                #expect(try overflowed("slow") == [.disconnected(.sessionOverflow), .expired(.sessionOverflow)])
                let last = try slow.receiveUntilClosed().last
                #expect(last == .disconnect(MQTTDisconnect(reasonCode: .quotaExceeded)))

                // The sessions are gone: back, they start empty.
                let returned = try RawClient(port: custody.port)
                let back = try returned.connect("device", clean: false, expiry: 3_600)
                #expect(back.reasonCode == .success && back.sessionPresent == false)
                #expect(throws: E2EError.self, "nothing queued") { try returned.receive(timeout: 0.5) }
                // Everyone else saw everything.
                var seen = 0
                while seen < 24, case .publish? = try watcher.receive(timeout: 10) { seen += 1 }
                #expect(seen == 24)
                try publish(publisher, [("other", "still fine")])
                guard case .publish(let after)? = try watcher.receive(timeout: 10) else { throw E2EError.unexpected("nothing") }
                #expect(String(buffer: after.payload) == "still fine")
                #expect(value(try scrape(custody), #"custody_limit_exceeded_total{limit="queueMaxMessages"}"#) == 2)
                try custody.waitForLog("session queue overflowed", "session_name=slow")
            }
        }
    }
}

/// SUBSCRIBE one filter and wait for the SUBACK.
func subscribe(_ client: RawClient, _ filter: String, _ qos: MQTTQoS, id: UInt16 = 1) throws {
    try client.send(.subscribe(MQTTSubscribe(
        packetIdentifier: id, subscriptions: [MQTTSubscription(topicFilter: filter, options: MQTTSubscriptionOptions(qos: qos))])))
    guard case .suback(let suback)? = try client.receive(), suback.reasonCodes.allSatisfy({ $0.rawValue < 0x80 }) else {
        throw E2EError.unexpected("no SUBACK granting \(filter)")
    }
}

/// QoS 1 PUBLISHes, 50 at a time (under the server's Receive Maximum), each acknowledged.
func publish(_ client: RawClient, _ messages: [(topic: String, text: String)], retain: Bool = false) throws {
    var next = 0
    while next < messages.count {
        let window = messages[next..<min(next + 50, messages.count)]
        for (offset, message) in window.enumerated() {
            try client.send(.publish(MQTTPublish(
                topicName: message.topic, payload: ByteBuffer(string: message.text), qos: .atLeastOnce, retain: retain,
                packetIdentifier: UInt16(offset + 1))))
        }
        for _ in window {
            guard case .puback(let ack)? = try client.receive(timeout: 20), !ack.reasonCode.isFailure else {
                throw E2EError.unexpected("no PUBACK")
            }
        }
        next += window.count
    }
}

/// `count` PUBLISHes as text, each acknowledged (QoS 1) as it comes.
func receiveAll(_ client: RawClient, count: Int, timeout: Double = 20) throws -> [String] {
    var texts: [String] = []
    while texts.count < count {
        guard let packet = try client.receive(timeout: timeout) else { throw E2EError.unexpected("closed after \(texts.count)") }
        guard case .publish(let publish) = packet else { continue }
        texts.append(String(buffer: publish.payload))
        if let id = publish.packetIdentifier { try client.send(.puback(MQTTPublishResponse(packetIdentifier: id))) }
    }
    return texts
}

/// custody's /metrics, as text.
func scrape(_ custody: RunningCustody) throws -> String {
    guard let line = custody.stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: metrics http://") }) else {
        throw E2EError.unexpected("no metrics line: \(custody.stdout)")
    }
    return try run("/usr/bin/curl", ["-s", String(line.dropFirst("custody: metrics ".count))]).1
}

/// The value of one series (name and labels exactly as Prometheus prints them); nil if absent.
func value(_ metrics: String, _ series: String) -> Int? {
    for line in metrics.split(separator: "\n") where line.hasPrefix(series + " ") {
        return Double(line.dropFirst(series.count + 1)).map { Int($0) }
    }
    return nil
}
