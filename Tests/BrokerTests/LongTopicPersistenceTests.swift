import Foundation
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// LMDB refuses keys over 511 bytes; topics and filters may be far longer. A retained
/// message and a persistent subscription on 1,000-byte names are stored, survive a restart,
/// and are deleted again by the same names (issue 15, defect 4).
@Suite("Long topics in the store")
struct LongTopicPersistenceTests {
    static let longTopic = "t/" + String(repeating: "é", count: 500)  // 1,002 bytes
    static let longFilter = longTopic + "/+"

    @Test func retainedMessagesAndSubscriptionsOnLongNamesSurviveARestart() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let sub = broker.connect("sub", persistent: true)
            let granted = try await sub.session.handle(subscribe([(Self.longFilter, .atLeastOnce)]))
            #expect(granted == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1]))])
            broker.detach(sub.session)
            let pub = broker.connect("pub")
            let answer = try await pub.session.handle(publish(Self.longTopic, "kept", qos: .atLeastOnce, id: 1, retain: true))
            #expect(answer == [.puback(ack(1, .noMatchingSubscribers))])
            broker.close()
        }
        do {
            let broker = try Broker(directory: directory)
            let sub = broker.connect("sub", persistent: true, present: true)
            #expect(try #require(broker.info(name("sub"))).subscriptions == [Self.longFilter])
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish(Self.longTopic + "/x", "routed", qos: .atLeastOnce, id: 2))
            #expect(sub.sink.takePublishes().map(text) == ["routed"])
            let reader = broker.connect("reader")
            // Retained messages follow the SUBACK in the answers.
            let retained = try await reader.session.handle(subscribe([(Self.longTopic, .atMostOnce)])).compactMap {
                if case .publish(let publish) = $0 { publish } else { nil }
            } + reader.sink.takePublishes()
            #expect(retained.map(\.topicName) == [Self.longTopic])
            #expect(retained.map(text) == ["kept"])
            // Deleted by the same names: nothing of them is left for the next start.
            _ = try await pub.session.handle(publish(Self.longTopic, "", qos: .atLeastOnce, id: 3, retain: true))
            _ = try await sub.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 4, topicFilters: [Self.longFilter])))
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        #expect(try #require(broker.info(name("sub"))).subscriptions.isEmpty)
        let reader = broker.connect("reader2")
        let answers = try await reader.session.handle(subscribe([(Self.longTopic, .atMostOnce)]))
        #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS0]))])
        #expect(reader.sink.takePublishes().isEmpty)
    }
}
