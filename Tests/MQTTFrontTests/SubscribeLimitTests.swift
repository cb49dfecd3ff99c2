import Foundation
import MQTTCodec
import NIOCore
import Testing

@testable import MQTTFront

private func subscribe(_ filters: [String], id: UInt16 = 1) -> MQTTPacket {
    .subscribe(MQTTSubscribe(packetIdentifier: id, subscriptions: filters.map {
        MQTTSubscription(topicFilter: $0, options: MQTTSubscriptionOptions(qos: .atLeastOnce))
    }))
}

/// What one SUBSCRIBE may ask (issue 15): filters per SUBSCRIBE (10), filter length (256
/// bytes) and depth (15 levels). At each limit it is allowed; one past it, that filter alone
/// is refused, and the client's other filters, and other clients, see nothing of it.
@Suite("SUBSCRIBE limits")
struct SubscribeLimitTests {
    @Test func theScreenMergesTheBrokersCodesInOrder() throws {
        let packet = MQTTSubscribe(packetIdentifier: 9, subscriptions: ["a", String(repeating: "x", count: 257), "b", "c"].map {
            MQTTSubscription(topicFilter: $0, options: MQTTSubscriptionOptions(qos: .atLeastOnce))
        })
        let screen = SubscribeScreen(
            packet, permissions: nil, limits: SubscribeLimits(maxFiltersPerSubscribe: 3), version: .mqtt5)
        #expect(screen.codes == [nil, .topicFilterInvalid, nil, .quotaExceeded])
        #expect(screen.forwarded?.subscriptions.map(\.topicFilter) == ["a", "b"])
        let merged = screen.merged(with: MQTTSubAck(packetIdentifier: 9, reasonCodes: [.grantedQoS1, .grantedQoS0]))
        #expect(merged.reasonCodes == [.grantedQoS1, .topicFilterInvalid, .grantedQoS0, .quotaExceeded])
        let v3 = SubscribeScreen(packet, permissions: nil, limits: SubscribeLimits(maxFiltersPerSubscribe: 3), version: .mqtt3_1_1)
        #expect(v3.codes == [nil, .unspecifiedError, nil, .unspecifiedError])
    }

    @Test func atTheLimitsAllowedOnePastRefused() async throws {
        try await offPool {
            let custody = try RunningCustody("subscribe-limits", arguments: ["--metrics", "127.0.0.1:0"])
            defer { custody.cleanUp() }
            // Without permission bindings nobody is kept from anything, and start-up says so.
            #expect(custody.stdout.contains("custody: authorization: open (every client may publish and subscribe anywhere)"))
            let bystander = try RawClient(port: custody.port)
            _ = try bystander.connect("bystander")
            try bystander.send(subscribe(["calm/#"]))
            #expect(try bystander.receive() == .suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1])))

            let client = try RawClient(port: custody.port)
            _ = try client.connect("limits")
            let ten = (1...10).map { "f/\($0)" }
            try client.send(subscribe(ten, id: 2))
            #expect(try client.receive() == .suback(MQTTSubAck(
                packetIdentifier: 2, reasonCodes: Array(repeating: .grantedQoS1, count: 10))))
            try client.send(subscribe(ten + ["f/11"], id: 3))
            #expect(try client.receive() == .suback(MQTTSubAck(
                packetIdentifier: 3, reasonCodes: Array(repeating: .grantedQoS1, count: 10) + [.quotaExceeded])))

            let long = String(repeating: "a", count: 256)
            let deep = (1...15).map { _ in "l" }.joined(separator: "/")
            try client.send(subscribe([long, long + "b", deep, deep + "/l"], id: 4))
            #expect(try client.receive() == .suback(MQTTSubAck(
                packetIdentifier: 4, reasonCodes: [.grantedQoS1, .topicFilterInvalid, .grantedQoS1, .topicFilterInvalid])))

            // 3.1.1: 0x80 for the refused filter, the connection stays.
            let old = try RawClient(port: custody.port, version: .mqtt3_1_1)
            _ = try old.connect("limits-v3", version: .mqtt3_1_1)
            try old.send(subscribe([deep + "/l", "ok"], id: 5))
            #expect(try old.receive() == .suback(MQTTSubAck(packetIdentifier: 5, reasonCodes: [.unspecifiedError, .grantedQoS1])))

            // The bystander's subscription still delivers.
            let publisher = try RawClient(port: custody.port)
            _ = try publisher.connect("publisher")
            try publisher.send(.publish(MQTTPublish(topicName: "calm/x", payload: ByteBuffer(string: "hi"), qos: .atMostOnce)))
            guard case .publish(let delivered)? = try bystander.receive() else { throw E2EError.unexpected("no delivery") }
            #expect(delivered.topicName == "calm/x")

            let metrics = try scrape(try metricsPort(custody))
            #expect(metrics.contains("custody_limit_exceeded_total{limit=\"maxFiltersPerSubscribe\"} 1"), "\(metrics)")
            #expect(metrics.contains("custody_limit_exceeded_total{limit=\"maxTopicBytes\"} 1"), "\(metrics)")
            #expect(metrics.contains("custody_limit_exceeded_total{limit=\"maxTopicLevels\"} 2"), "\(metrics)")
            _ = try custody.waitForLog("limit exceeded", "maxFiltersPerSubscribe")
        }
    }
}
