import MQTTCodec
import Testing

@testable import Broker

/// `maxRetainedBytes` and `maxRetainedMessages`: a retained message past either is not kept.
/// A v5 QoS 1/2 publisher is told (PUBACK/PUBREC 0x97) and the message goes nowhere; QoS 0 and
/// 3.1.1 messages are delivered as usual. Replacing and deleting are always allowed.
@Suite("Limits: retained messages")
struct RetainedLimitTests {
    /// The retained messages a new subscription to `filter` gets, as text.
    func retainedTexts(_ broker: Broker, _ filter: String = "#") async throws -> [String] {
        let probe = broker.connect("probe-\(filter)")
        defer { broker.detach(probe.session) }
        let answers = try await probe.session.handle(subscribe([(filter, .atMostOnce)]))
        return answers.compactMap { if case .publish(let p) = $0 { text(p) } else { nil } }.sorted()
    }

    @Test func aRetainedMessageOverTheSizeIsRefusedOrOnlyDelivered() async throws {
        let observer = RecordingObserver()
        let broker = try Broker(directory: nil, limits: BrokerLimits(maxRetainedBytes: 4), observer: observer)
        defer { broker.close() }
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t/#", .exactlyOnce)]))
        let pub = broker.connect("pub")
        // At the limit: kept and delivered.
        #expect(try await pub.session.handle(publish("t/1", "four", qos: .atLeastOnce, id: 1, retain: true))
            == [.puback(ack(1))])
        // One byte past it: 0x97, neither kept nor delivered.
        #expect(try await pub.session.handle(publish("t/2", "five!", qos: .atLeastOnce, id: 2, retain: true))
            == [.puback(ack(2, .quotaExceeded))])
        #expect(try await pub.session.handle(publish("t/3", "five!", qos: .exactlyOnce, id: 3, retain: true))
            == [.pubrec(ack(3, .quotaExceeded))])
        // An error PUBREC ends the flow: nothing waits for a PUBREL.
        #expect(try await pub.session.handle(.pubrel(ack(3))) == [.pubcomp(ack(3, .packetIdentifierNotFound))])
        // QoS 0 cannot be refused: delivered, not kept.
        _ = try await pub.session.handle(publish("t/4", "five!", retain: true))
        #expect(sub.sink.takePublishes().map { "\($0.topicName) \(text($0))" } == ["t/1 four", "t/4 five!"])
        #expect(try await retainedTexts(broker) == ["four"])
        #expect(observer.count(.maxRetainedBytes, "pub") == 3)
        // Not retained, the same message is an ordinary one.
        #expect(try await pub.session.handle(publish("t/5", "five!", qos: .atLeastOnce, id: 5)) == [.puback(ack(5))])
        #expect(sub.sink.takePublishes().map(text) == ["five!"])
    }

    @Test func version311IsDeliveredButNotKept() async throws {
        let observer = RecordingObserver()
        let broker = try Broker(directory: nil, limits: BrokerLimits(maxRetainedBytes: 4), observer: observer)
        defer { broker.close() }
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        let pub = broker.connect("pub", version: .mqtt3_1_1)
        #expect(try await pub.session.handle(publish("t", "five!", qos: .atLeastOnce, id: 1, retain: true)) == [.puback(ack(1))])
        #expect(sub.sink.takePublishes().map(text) == ["five!"])
        #expect(try await retainedTexts(broker).isEmpty)
        #expect(observer.count(.maxRetainedBytes) == 1)
    }

    @Test func atTheCountNewTopicsAreRefusedWhileReplacingAndDeletingWork() async throws {
        let observer = RecordingObserver()
        let broker = try Broker(directory: nil, limits: BrokerLimits(maxRetainedMessages: 2), observer: observer)
        defer { broker.close() }
        let pub = broker.connect("pub")
        #expect(try await pub.session.handle(publish("a", "1", qos: .atLeastOnce, id: 1, retain: true))
            == [.puback(ack(1, .noMatchingSubscribers))])
        #expect(try await pub.session.handle(publish("b", "1", qos: .atLeastOnce, id: 2, retain: true))
            == [.puback(ack(2, .noMatchingSubscribers))])
        // The count reached: a new topic is refused...
        #expect(try await pub.session.handle(publish("c", "1", qos: .atLeastOnce, id: 3, retain: true))
            == [.puback(ack(3, .quotaExceeded))])
        // ...replacing one is not...
        #expect(try await pub.session.handle(publish("a", "2", qos: .atLeastOnce, id: 4, retain: true))
            == [.puback(ack(4, .noMatchingSubscribers))])
        #expect(try await retainedTexts(broker) == ["1", "2"])
        // ...nor deleting one, which makes room.
        #expect(try await pub.session.handle(publish("b", "", qos: .atLeastOnce, id: 5, retain: true))
            == [.puback(ack(5, .noMatchingSubscribers))])
        #expect(try await pub.session.handle(publish("c", "3", qos: .atLeastOnce, id: 6, retain: true))
            == [.puback(ack(6, .noMatchingSubscribers))])
        #expect(try await retainedTexts(broker) == ["2", "3"])
        #expect(observer.count(.maxRetainedMessages, "pub") == 1)
        #expect(broker.totals.retained == 2)

        // Another client on the same broker: its ordinary messages and its replacements go on.
        let other = broker.connect("other")
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("x", .atMostOnce)]))
        _ = try await other.session.handle(publish("x", "plain"))
        _ = try await other.session.handle(publish("a", "4", retain: true))
        #expect(sub.sink.takePublishes().map(text) == ["plain"])
        #expect(try await retainedTexts(broker, "a") == ["4"])
    }
}
