import Foundation
import MQTTCodec
import NIOCore
import Testing

/// Topic aliases from the server (MQTT 5.0 section 3.3.2.3.4), as the Eclipse Paho
/// interoperability suite's test_server_topic_alias expects: a client that announces a Topic
/// Alias Maximum gets each topic once with an alias, then the alias alone; never more aliases
/// than it announced (nor than the server's own maximum); a QoS 1 message sent again on a new
/// connection carries its topic. Clients that announce none get full topics, as before.
@Suite("Outbound topic aliases")
struct OutboundTopicAliasTests {
    private func connect(_ client: RawClient, _ name: String, aliases: UInt16?, clean: Bool = true) throws -> MQTTConnAck {
        var properties: MQTTProperties = [.sessionExpiryInterval(300)]
        if let aliases { properties.append(.topicAliasMaximum(aliases)) }
        try client.send(.connect(MQTTConnect(
            protocolVersion: .mqtt5, clientIdentifier: name, cleanStart: clean, properties: properties)))
        guard case .connack(let connack)? = try client.receive() else { throw E2EError.unexpected("no CONNACK") }
        return connack
    }

    private func subscribe(_ client: RawClient, qos: MQTTQoS) throws {
        try client.send(.subscribe(MQTTSubscribe(
            packetIdentifier: 1,
            subscriptions: [MQTTSubscription(topicFilter: "alias/#", options: MQTTSubscriptionOptions(qos: qos))])))
        guard case .suback? = try client.receive() else { throw E2EError.unexpected("no SUBACK") }
    }

    @Test func topicsAreSentOnceThenByAliasUpToTheClientsMaximum() async throws {
        try await offPool {
            try withCustody("outbound-alias") { custody in
                let aliased = try RawClient(port: custody.port)
                #expect(try connect(aliased, "aliased", aliases: 2).reasonCode == .success)
                try subscribe(aliased, qos: .atMostOnce)
                let plain = try RawClient(port: custody.port)
                #expect(try connect(plain, "plain", aliases: nil).reasonCode == .success)
                try subscribe(plain, qos: .atMostOnce)

                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("alias-pub").reasonCode == .success)
                let topics = ["alias/a", "alias/a", "alias/b", "alias/c", "alias/b", "alias/a", "alias/c"]
                for (index, topic) in topics.enumerated() {
                    try publisher.send(.publish(MQTTPublish(
                        topicName: topic, payload: ByteBuffer(string: "\(index)"), qos: .atLeastOnce,
                        packetIdentifier: UInt16(index + 1))))
                    guard case .puback? = try publisher.receive() else { throw E2EError.unexpected("no PUBACK") }
                }
                let got = try aliased.publishes(topics.count, within: 10)
                let wire = got.map { "\($0.topicName)|\($0.properties.topicAlias.map(String.init) ?? "-")" }
                // a and b take aliases 1 and 2; c finds none left and is always sent in full.
                #expect(wire == [
                    "alias/a|1", "|1", "alias/b|2", "alias/c|-", "|2", "|1", "alias/c|-",
                ])
                // A client that announced nothing gets topics only.
                let full = try plain.publishes(topics.count, within: 10)
                #expect(full.map(\.topicName) == topics)
                #expect(full.allSatisfy { $0.properties.topicAlias == nil })
            }
        }
    }

    @Test func aQoS1MessageSentAgainOnANewConnectionCarriesItsTopic() async throws {
        try await offPool {
            try withCustody("outbound-alias-resend", fastReconnects) { custody in
                let subscriber = try RawClient(port: custody.port)
                #expect(try connect(subscriber, "resend", aliases: 5, clean: true).reasonCode == .success)
                try subscribe(subscriber, qos: .atLeastOnce)
                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("resend-pub").reasonCode == .success)
                for id in UInt16(1)...2 {
                    try publisher.send(.publish(MQTTPublish(
                        topicName: "alias/r", payload: ByteBuffer(string: "r\(id)"), qos: .atLeastOnce, packetIdentifier: id)))
                    _ = try publisher.receive()
                }
                // Both received (the second by alias alone), neither acknowledged; the client goes.
                let first = try subscriber.publishes(2, within: 10)
                #expect(first.map(\.topicName) == ["alias/r", ""])
                subscriber.drop()
                try custody.waitForEvent { $0.sessionName.value == "resend" && $0.kind == .disconnected(.connectionLost) }

                // Back on a new connection: aliases start again, so the resends carry the topic.
                let back = try RawClient(port: custody.port)
                let connack = try connect(back, "resend", aliases: 5, clean: false)
                #expect(connack.sessionPresent)
                let again = try back.publishes(2, within: 10)
                #expect(again.count == 2)
                #expect(again.allSatisfy { $0.duplicate })
                #expect(again.first?.topicName == "alias/r")
                // Whatever the second carries, it names alias/r: the topic, or the alias the first set.
                if let second = again.last, second.topicName.isEmpty {
                    #expect(second.properties.topicAlias == again.first?.properties.topicAlias)
                    #expect(second.properties.topicAlias != nil)
                }
            }
        }
    }
}
