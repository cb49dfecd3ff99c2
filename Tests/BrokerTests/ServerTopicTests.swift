import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// The server's own topics (`$custody/...`): published by the server only, read only by
/// sessions allowed to, never matched by a top-level wildcard.
@Suite("Server topics")
struct ServerTopicTests {
    @Test func anAllowedSubscriberGetsServerMessagesInOrderAndWildcardsDoNot() async throws {
        let broker = try Broker(directory: nil)
        let reader = broker.connect("reader")
        reader.session.allowServerTopics(true)
        let everything = broker.connect("everything")
        let answers = try await reader.session.handle(subscribe([("$custody/events/#", .atLeastOnce)]))
        #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1]))])
        let wildcard = try await everything.session.handle(subscribe([("#", .atLeastOnce), ("+/events/#", .atLeastOnce)]))
        #expect(wildcard == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1, .grantedQoS1]))])

        for i in 1...5 {
            broker.publishFromServer(
                topic: "$custody/events/clients/a/sessions/s\(i)", payload: payload("\(i)"), qos: .atLeastOnce)
        }
        let received = reader.sink.takePublishes()
        #expect(received.map(text) == ["1", "2", "3", "4", "5"])
        #expect(received.allSatisfy { $0.qos == .atLeastOnce && !$0.retain })
        #expect(everything.sink.takePublishes().isEmpty)
        #expect(broker.totals.serverPublished == 5)
    }

    @Test(arguments: [MQTTProtocolVersion.mqtt5, .mqtt3_1_1])
    func aSessionNotAllowedIsRefusedServerFilters(_ version: MQTTProtocolVersion) async throws {
        let broker = try Broker(directory: nil)
        let client = broker.connect("nosy", version: version)
        let answers = try await client.session.handle(subscribe([
            ("$custody/events/#", .atLeastOnce), ("a/b", .atMostOnce), ("$custody", .atMostOnce),
            ("$share/g/$custody/events/#", .atMostOnce),
        ]))
        let refused: MQTTReasonCode = version == .mqtt5 ? .notAuthorized : .unspecifiedError
        #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [refused, .grantedQoS0, refused, refused]))])
        broker.publishFromServer(topic: "$custody/events/clients/a/sessions/s", payload: payload("x"), qos: .atLeastOnce)
        #expect(client.sink.takePublishes().isEmpty)
        #expect(broker.info(name("nosy"))?.subscriptions == ["a/b"])
    }

    @Test func theAllowanceEndsWithTheConnection() async throws {
        let broker = try Broker(directory: nil)
        let first = broker.connect("s", persistent: true)
        first.session.allowServerTopics(true)
        broker.detach(first.session)
        let second = broker.connect("s", persistent: true, present: true)
        let answers = try await second.session.handle(subscribe([("$custody/#", .atMostOnce)]))
        #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.notAuthorized]))])
    }

    @Test func clientsCannotPublishOnServerTopics() async throws {
        let broker = try Broker(directory: nil)
        let reader = broker.connect("reader")
        reader.session.allowServerTopics(true)
        _ = try await reader.session.handle(subscribe([("$custody/#", .exactlyOnce)]))
        let forger = broker.connect("forger")
        let forger3 = broker.connect("forger3", version: .mqtt3_1_1)
        #expect(try await forger.session.handle(publish("$custody/events/clients/x/sessions/y", "fake")) == [])
        #expect(
            try await forger.session.handle(publish("$custody/events/clients/x/sessions/y", "fake", qos: .atLeastOnce, id: 7))
                == [.puback(ack(7, .notAuthorized))])
        #expect(
            try await forger.session.handle(publish("$custody/events/clients/x/sessions/y", "fake", qos: .exactlyOnce, id: 8))
                == [.pubrec(ack(8, .notAuthorized))])
        // 3.1.1 has no way to say no: acknowledged, and dropped all the same.
        #expect(
            try await forger3.session.handle(publish("$custody/events/clients/x/sessions/y", "fake", qos: .atLeastOnce, id: 9))
                == [.puback(ack(9))])
        #expect(reader.sink.takePublishes().isEmpty)
        // Other `$` topics are not the server's.
        _ = try await reader.session.handle(subscribe([("$other/#", .atMostOnce)], id: 2))
        _ = try await forger.session.handle(publish("$other/x", "fine"))
        #expect(reader.sink.takePublishes().map(text) == ["fine"])
    }

    /// `mayDeliverServerTopic` is false exactly when no subscription (plain or shared) could
    /// match a `$custody/...` topic, so that the lifecycle publisher may skip making messages.
    @Test func theServerKnowsWhenNobodyCouldReadItsTopics() async throws {
        let broker = try Broker(directory: nil)
        let topic = "$custody/events/clients/a/sessions/s"
        #expect(!broker.mayDeliverServerTopic(topic))
        #expect(broker.mayDeliverServerTopic("a/b"))
        let everything = broker.connect("everything")
        _ = try await everything.session.handle(subscribe([("#", .atLeastOnce), ("+/events/#", .atLeastOnce)]))
        #expect(!broker.mayDeliverServerTopic(topic))
        broker.countServerPublished(2)
        #expect(broker.totals.serverPublished == 2)

        let reader = broker.connect("reader")
        reader.session.allowServerTopics(true)
        _ = try await reader.session.handle(subscribe([("$share/g/$custody/events/#", .atLeastOnce)]))
        #expect(broker.mayDeliverServerTopic(topic))
        broker.publishFromServer(topic: topic, payload: payload("1"), qos: .atLeastOnce)
        #expect(reader.sink.takePublishes().map(text) == ["1"])
        #expect(broker.totals.serverPublished == 3)
        broker.detach(reader.session)
        #expect(!broker.mayDeliverServerTopic(topic))

        let plain = broker.connect("plain")
        plain.session.allowServerTopics(true)
        _ = try await plain.session.handle(subscribe([("$custody/+/clients/#", .atMostOnce)]))
        #expect(broker.mayDeliverServerTopic(topic))
    }

    /// A persistent reader that is away gets the server's QoS 1 messages when it returns,
    /// from the store across a restart.
    @Test func serverMessagesWaitForAPersistentReader() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let reader = broker.connect("reader", persistent: true)
            reader.session.allowServerTopics(true)
            _ = try await reader.session.handle(subscribe([("$custody/events/#", .atLeastOnce)]))
            broker.detach(reader.session)
            for i in 1...3 {
                broker.publishFromServer(topic: "$custody/events/clients/a/sessions/s", payload: payload("\(i)"), qos: .atLeastOnce)
            }
            #expect(broker.totals.queued == 3)
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let reader = broker.connect("reader", persistent: true, present: true)
        try await Task.sleep(for: .milliseconds(50))
        #expect(reader.sink.takePublishes().map(text) == ["1", "2", "3"])
    }
}
