import Foundation
import MQTTCodec
import NIOCore
import Testing

/// The Receive Maximum and Topic Alias Maximum a v5 CONNACK announces are limits too
/// (`limits.receiveMaximum` 100, `limits.topicAliasMaximum` 10; FlowControlTests checks the
/// defaults): set by their flags, at the limit taken, one more DISCONNECT 0x93 / 0x94, counted.
@Suite("Receive Maximum and Topic Alias Maximum flags")
struct FlowLimitFlagTests {
    @Test func theFlagsAreAnnouncedAndHeld() async throws {
        try await offPool {
            try withCustody(
                "flow-flags", ["--receive-maximum", "5", "--topic-alias-maximum", "2", "--metrics", "127.0.0.1:0"]
            ) { custody in
                let other = try RawClient(port: custody.port)
                let connack = try other.connect("bystander")
                #expect(connack.properties.receiveMaximum == 5)
                #expect(connack.properties.topicAliasMaximum == 2)

                // Five QoS 2 PUBLISHes never released are five in flight: taken. The sixth is 0x93.
                let flood = try RawClient(port: custody.port)
                #expect(try flood.connect("flood").reasonCode == .success)
                for id in UInt16(1)...5 {
                    try flood.send(.publish(MQTTPublish(
                        topicName: "f", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: id)))
                    #expect(try flood.publishAnswer() == .noMatchingSubscribers)
                }
                try flood.send(.publish(MQTTPublish(topicName: "f", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: 6)))
                #expect(try flood.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .receiveMaximumExceeded))])

                // Alias 2 is the last one allowed; 3 is 0x94.
                let aliases = try RawClient(port: custody.port)
                #expect(try aliases.connect("aliases").reasonCode == .success)
                try aliases.send(.publish(MQTTPublish(
                    topicName: "a", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 1, properties: [.topicAlias(2)])))
                #expect(try aliases.publishAnswer() == .noMatchingSubscribers)
                try aliases.send(.publish(MQTTPublish(topicName: "b", payload: ByteBuffer(), properties: [.topicAlias(3)])))
                #expect(try aliases.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])

                #expect(try other.isServed())
                #expect(try custody.limitExceeded("receiveMaximum") == 1)
                #expect(try custody.limitExceeded("topicAliasMaximum") == 1)
                for name in ["flood", "aliases"] {
                    let end = try custody.waitForEvent { $0.sessionName.value == name && $0.kind != .connected }
                    #expect(end.kind == .disconnected(.clientError))
                }
            }
            for (flag, value) in [("--receive-maximum", "0"), ("--topic-alias-maximum", "65536")] {
                let (status, _, error) = try run(product: "custody", [flag, value])
                #expect(status != 0)
                #expect(error.contains(flag), "\(error)")
            }
        }
    }
}
