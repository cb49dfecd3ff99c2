import Foundation
import MQTTCodec
import NIOCore
import Testing

/// Topic names on PUBLISH and wills (`limits.maxTopicBytes` 256, `limits.maxTopicLevels` 15, as
/// Event Grid): at the limits a message is delivered; one byte or level more and v5 QoS 1/2 get
/// PUBACK/PUBREC 0x90 (the message is dropped, the connection stays), v5 QoS 0 DISCONNECT 0x90,
/// 3.1.1 a closed connection (ledger `disconnected(clientError)`); a will topic over them is
/// refused at CONNECT (v5 CONNACK 0x90, 3.1.1 closed). A subscriber to `#` sees only what was
/// taken, and stays. Counted and logged as the limit.
@Suite("Topic name limits")
struct TopicLimitTests {
    @Test func atTheLimitsTakenOneMoreRefusedAndNobodyElseSeesIt() async throws {
        try await offPool {
            try withCustody("topic-limits", ["--metrics", "127.0.0.1:0"]) { custody in
                let watcher = try RawClient(port: custody.port)
                #expect(try watcher.connect("watcher").reasonCode == .success)
                try watcher.subscribe("#")

                let client = try RawClient(port: custody.port)
                #expect(try client.connect("topics").reasonCode == .success)
                func publish(_ topic: String, _ qos: MQTTQoS, id: UInt16) throws -> MQTTPacket? {
                    try client.send(.publish(MQTTPublish(
                        topicName: topic, payload: ByteBuffer(string: "m\(id)"), qos: qos,
                        packetIdentifier: qos == .atMostOnce ? nil : id)))
                    return try client.receive()
                }
                let longest = limitTopic(bytes: 256)
                let deepest = limitTopic(bytes: 29, levels: 15)
                #expect(try publish(longest, .atLeastOnce, id: 1) == .puback(MQTTPublishResponse(packetIdentifier: 1)))
                #expect(try publish(limitTopic(bytes: 257), .atLeastOnce, id: 2)
                    == .puback(MQTTPublishResponse(packetIdentifier: 2, reasonCode: .topicNameInvalid)))
                #expect(try publish(deepest, .atLeastOnce, id: 3) == .puback(MQTTPublishResponse(packetIdentifier: 3)))
                #expect(try publish(limitTopic(bytes: 31, levels: 16), .atLeastOnce, id: 4)
                    == .puback(MQTTPublishResponse(packetIdentifier: 4, reasonCode: .topicNameInvalid)))
                #expect(try publish(limitTopic(bytes: 300), .exactlyOnce, id: 5)
                    == .pubrec(MQTTPublishResponse(packetIdentifier: 5, reasonCode: .topicNameInvalid)))

                // The watcher got the two taken, and nothing of the refused.
                let seen = try watcher.publishes(2, within: 10)
                #expect(seen.map(\.topicName) == [longest, deepest])
                #expect(try watcher.hearsNothing(for: 0.5))

                // QoS 0 has no answer of its own: the connection ends with 0x90.
                try client.send(.publish(MQTTPublish(topicName: limitTopic(bytes: 257), payload: ByteBuffer())))
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .topicNameInvalid))])
                let end = try custody.waitForEvent { $0.sessionName.value == "topics" && $0.kind != .connected }
                #expect(end.kind == .disconnected(.clientError))

                // 3.1.1 has no reason codes at all: closed.
                let v3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                #expect(try v3.connect("topics-v3", version: .mqtt3_1_1).reasonCode == .success)
                try v3.send(.publish(MQTTPublish(
                    topicName: limitTopic(bytes: 31, levels: 16), payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 1)))
                #expect(try v3.receiveUntilClosed().isEmpty)
                let v3End = try custody.waitForEvent { $0.sessionName.value == "topics-v3" && $0.kind != .connected }
                #expect(v3End.kind == .disconnected(.clientError))

                // A will topic over the limits: refused at CONNECT, before the ledger.
                let willed = try RawClient(port: custody.port)
                let will = MQTTWill(topic: limitTopic(bytes: 257), payload: ByteBuffer(string: "bye"))
                #expect(try willed.connect("willed", will: will).reasonCode == .topicNameInvalid)
                #expect(try willed.receiveUntilClosed().isEmpty)
                let v3Willed = try RawClient(port: custody.port, version: .mqtt3_1_1)
                try v3Willed.send(.connect(MQTTConnect(
                    protocolVersion: .mqtt3_1_1, clientIdentifier: "willed-v3",
                    will: MQTTWill(topic: limitTopic(bytes: 31, levels: 16), payload: ByteBuffer()))))
                #expect(try v3Willed.receiveUntilClosed().isEmpty)
                let fine = try RawClient(port: custody.port)
                #expect(try fine.connect("willed-ok", will: MQTTWill(topic: longest, payload: ByteBuffer())).reasonCode == .success)
                #expect(try custody.events().allSatisfy { !["willed", "willed-v3"].contains($0.sessionName.value) })

                // The watcher was never disturbed.
                #expect(try watcher.isServed())
                #expect(try watcher.hearsNothing(for: 0.2))
                #expect(try custody.limitExceeded("maxTopicBytes") == 4)
                #expect(try custody.limitExceeded("maxTopicLevels") == 3)
                try custody.waitForLog("limit exceeded", "limit=maxTopicBytes", "session_name=topics")
            }
        }
    }

    /// The flags set the limits; a bad value is refused naming the flag.
    @Test func theFlagsSetTheLimits() async throws {
        try await offPool {
            try withCustody("topic-flags", ["--max-topic-bytes", "8", "--max-topic-levels", "2"]) { custody in
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("flags").reasonCode == .success)
                for (topic, code) in [("abc/defg", MQTTReasonCode.noMatchingSubscribers), ("abc/defgh", .topicNameInvalid),
                    ("a/b/c", .topicNameInvalid)]
                {
                    try client.send(.publish(MQTTPublish(topicName: topic, payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 7)))
                    #expect(try client.publishAnswer() == code, "\(topic)")
                }
            }
            for (flag, value) in [("--max-topic-bytes", "0"), ("--max-topic-levels", "40000")] {
                let (status, _, error) = try run(product: "custody", [flag, value])
                #expect(status != 0)
                #expect(error.contains(flag), "\(error)")
            }
        }
    }
}
