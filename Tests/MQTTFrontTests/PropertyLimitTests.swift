import Foundation
import MQTTCodec
import NIOCore
import Testing

/// Property sizes (`limits.maxUserPropertyBytes`, 32 KiB of User Properties per packet;
/// `limits.maxPropertyValueBytes`, 256 bytes of Response Topic, Correlation Data or Content
/// Type): at the limits a message is delivered with its properties, one byte more closes the
/// connection with DISCONNECT 0x95 (ledger `disconnected(clientError)`), a CONNECT over them gets
/// CONNACK 0x95. Another client sees none of it.
@Suite("Property size limits")
struct PropertyLimitTests {
    private func userProperties(totalBytes: Int) -> MQTTProperties {
        // Names of 8 bytes, values of up to 1,000: several properties, as clients send them.
        var properties = MQTTProperties()
        var left = totalBytes
        var index = 0
        while left > 0 {
            let value = min(1_000, left - 8)
            properties.append(.userProperty(MQTTUserProperty(
                name: String(format: "name%04d", index), value: String(repeating: "v", count: value))))
            left -= 8 + value
            index += 1
        }
        return properties
    }

    @Test func theDefaultsHoldAtTheLimitAndOneByteMoreCloses() async throws {
        try await offPool {
            try withCustody("property-limits", ["--metrics", "127.0.0.1:0"]) { custody in
                let watcher = try RawClient(port: custody.port)
                #expect(try watcher.connect("prop-watcher").reasonCode == .success)
                try watcher.subscribe("props/#")

                let client = try RawClient(port: custody.port)
                #expect(try client.connect("props").reasonCode == .success)
                var atLimit = userProperties(totalBytes: 32 * 1024)
                atLimit.append(.responseTopic(limitTopic(bytes: 256)))
                atLimit.append(.correlationData(ByteBuffer(repeating: 7, count: 256)))
                atLimit.append(.contentType(String(repeating: "c", count: 256)))
                try client.send(.publish(MQTTPublish(
                    topicName: "props/ok", payload: ByteBuffer(string: "fits"), qos: .atLeastOnce, packetIdentifier: 1,
                    properties: atLimit)))
                #expect(try client.receive() == .puback(MQTTPublishResponse(packetIdentifier: 1)))
                let delivered = try watcher.publishes(1, within: 10)
                #expect(delivered.first?.properties.userProperties.count == atLimit.userProperties.count)
                #expect(delivered.first?.properties.correlationData?.readableBytes == 256)

                try client.send(.publish(MQTTPublish(
                    topicName: "props/over", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 2,
                    properties: userProperties(totalBytes: 32 * 1024 + 1))))
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
                let end = try custody.waitForEvent { $0.sessionName.value == "props" && $0.kind != .connected }
                #expect(end.kind == .disconnected(.clientError))

                let another = try RawClient(port: custody.port)
                #expect(try another.connect("props-2").reasonCode == .success)
                try another.send(.publish(MQTTPublish(
                    topicName: "props/over", payload: ByteBuffer(), properties: [.contentType(String(repeating: "c", count: 257))])))
                #expect(try another.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])

                #expect(try watcher.hearsNothing(for: 0.5))
                #expect(try watcher.isServed())
                #expect(try custody.limitExceeded("maxUserPropertyBytes") == 1)
                #expect(try custody.limitExceeded("maxPropertyValueBytes") == 1)
            }
        }
    }

    @Test func theFlagsSetTheLimitsAndACONNECTOverThemGets0x95() async throws {
        try await offPool {
            try withCustody("property-flags", ["--max-user-property-bytes", "100", "--max-property-value-bytes", "16"]) { custody in
                let big = try RawClient(port: custody.port)
                try big.send(.connect(MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "big-connect",
                    properties: [.userProperty(MQTTUserProperty(name: "n", value: String(repeating: "v", count: 100)))])))
                guard case .connack(let connack)? = try big.receive() else { throw E2EError.unexpected("no CONNACK") }
                #expect(connack.reasonCode == .packetTooLarge)

                let willed = try RawClient(port: custody.port)
                let will = MQTTWill(topic: "w", payload: ByteBuffer(), properties: [.responseTopic(String(repeating: "r", count: 17))])
                #expect(try willed.connect("big-will", will: will).reasonCode == .packetTooLarge)

                let client = try RawClient(port: custody.port)
                #expect(try client.connect("small").reasonCode == .success)
                try client.send(.publish(MQTTPublish(
                    topicName: "t", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 1,
                    properties: [.responseTopic(String(repeating: "r", count: 16))])))
                #expect(try client.publishAnswer() == .noMatchingSubscribers)
                try client.send(.publish(MQTTPublish(
                    topicName: "t", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 2,
                    properties: [.correlationData(ByteBuffer(repeating: 1, count: 17))])))
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
            }
        }
    }
}
