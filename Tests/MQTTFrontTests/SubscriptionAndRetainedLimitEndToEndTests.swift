import Foundation
import MQTTCodec
import NIOCore
import Testing

/// `maxSubscriptionsPerSession`, `maxRetainedBytes` and `maxRetainedMessages` over 127.0.0.1
/// against `custody`, set by flags: at the limit allowed, one past it refused as documented,
/// counted in /metrics and logged; other clients see nothing of it.
@Suite("Limits end to end: subscriptions and retained messages")
struct SubscriptionAndRetainedLimitEndToEndTests {
    @Test func pastTheLimitsClientsAreToldAndOthersSeeNothing() async throws {
        try await offPool {
            try withCustody("subs-retained", [
                "--max-subscriptions-per-session", "2", "--max-retained-bytes", "8", "--max-retained-messages", "2",
                "--metrics", "127.0.0.1:0",
            ]) { custody in
                // Subscriptions: two allowed, the third refused (v5 0x97, 3.1.1 0x80), a held one replaced.
                let v5 = try RawClient(port: custody.port)
                #expect(try v5.connect("v5").reasonCode == .success)
                #expect(try suback(v5, ["r/#", "x", "y"]) == [.grantedQoS1, .grantedQoS1, .quotaExceeded])
                #expect(try suback(v5, ["x"], id: 2) == [.grantedQoS1])
                let v3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                #expect(try v3.connect("v3", version: .mqtt3_1_1).reasonCode == .success)
                #expect(try suback(v3, ["a", "b", "c"]) == [.grantedQoS1, .grantedQoS1, .unspecifiedError])
                let other = try RawClient(port: custody.port)
                #expect(try other.connect("other").reasonCode == .success)
                #expect(try suback(other, ["x", "y"]) == [.grantedQoS1, .grantedQoS1])

                // Retained: 8 bytes kept; 9 refused (v5 QoS 1: 0x97, not delivered); QoS 0 delivered, not kept.
                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("publisher").reasonCode == .success)
                #expect(try puback(publisher, "r/1", "12345678", id: 1) == .success)
                #expect(try puback(publisher, "r/2", "123456789", id: 2) == .quotaExceeded)
                try publisher.send(.publish(MQTTPublish(topicName: "r/3", payload: ByteBuffer(string: "123456789"), retain: true)))
                #expect(try texts(v5, 2) == ["r/1 12345678", "r/3 123456789"])
                // Count: a second topic fits, a third is refused, replacing and deleting work.
                #expect(try puback(publisher, "r/4", "four", id: 3) == .success)
                #expect(try puback(publisher, "r/5", "five", id: 4) == .quotaExceeded)
                #expect(try puback(publisher, "r/4", "FOUR", id: 5) == .success)
                #expect(try puback(publisher, "r/1", "", id: 6) == .success)
                #expect(try puback(publisher, "r/5", "five", id: 7) == .success)
                #expect(try texts(v5, 4) == ["r/4 four", "r/4 FOUR", "r/1 ", "r/5 five"])
                let late = try RawClient(port: custody.port)
                #expect(try late.connect("late").reasonCode == .success)
                try late.send(.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "r/#")])))
                guard case .suback? = try late.receive() else { throw E2EError.unexpected("no SUBACK") }
                #expect(Set(try texts(late, 2)) == ["r/4 FOUR", "r/5 five"])

                // The other client's subscriptions and messages were never touched.
                try publisher.send(.publish(MQTTPublish(topicName: "y", payload: ByteBuffer(string: "to y"))))
                #expect(try texts(other, 1) == ["y to y"])

                let metrics = try scrape(custody)
                #expect(value(metrics, #"custody_limit_exceeded_total{limit="maxSubscriptionsPerSession"}"#) == 2)
                #expect(value(metrics, #"custody_limit_exceeded_total{limit="maxRetainedBytes"}"#) == 2)
                #expect(value(metrics, #"custody_limit_exceeded_total{limit="maxRetainedMessages"}"#) == 1)
                try custody.waitForLog("limit exceeded", "limit=maxSubscriptionsPerSession", "session_name=v3")
                try custody.waitForLog("limit exceeded", "limit=maxRetainedBytes", "session_name=publisher")
                try custody.waitForLog("limit exceeded", "limit=maxRetainedMessages", "session_name=publisher")
            }
        }
    }

    /// A SUBSCRIBE of `filters` at QoS 1: the SUBACK's codes.
    private func suback(_ client: RawClient, _ filters: [String], id: UInt16 = 1) throws -> [MQTTReasonCode] {
        try client.send(.subscribe(MQTTSubscribe(packetIdentifier: id, subscriptions: filters.map {
            MQTTSubscription(topicFilter: $0, options: MQTTSubscriptionOptions(qos: .atLeastOnce))
        })))
        guard case .suback(let suback)? = try client.receive() else { throw E2EError.unexpected("no SUBACK") }
        return suback.reasonCodes
    }

    /// A retained QoS 1 PUBLISH: its PUBACK's code.
    private func puback(_ client: RawClient, _ topic: String, _ text: String, id: UInt16) throws -> MQTTReasonCode {
        try client.send(.publish(MQTTPublish(
            topicName: topic, payload: ByteBuffer(string: text), qos: .atLeastOnce, retain: true, packetIdentifier: id)))
        guard case .puback(let ack)? = try client.receive() else { throw E2EError.unexpected("no PUBACK") }
        return ack.reasonCode == .noMatchingSubscribers ? .success : ack.reasonCode
    }

    /// The next `count` PUBLISHes as "topic payload", acknowledged.
    private func texts(_ client: RawClient, _ count: Int) throws -> [String] {
        var seen: [String] = []
        while seen.count < count {
            guard let packet = try client.receive() else { throw E2EError.unexpected("closed after \(seen)") }
            guard case .publish(let publish) = packet else { continue }
            seen.append("\(publish.topicName) \(String(buffer: publish.payload))")
            if let id = publish.packetIdentifier { try client.send(.puback(MQTTPublishResponse(packetIdentifier: id))) }
        }
        return seen
    }
}
