import LMDBStorage
import MQTTCodec
import Testing

@testable import Broker

/// `maxSubscriptionsPerSession`: new filters past the limit get 0x97 (3.1.1: 0x80), filters
/// the session holds are replaced whatever the count, and nobody else notices.
@Suite("Limits: subscriptions per session")
struct SubscriptionLimitTests {
    @Test func atTheLimitNewFiltersAreRefusedAndHeldOnesReplaced() async throws {
        let observer = RecordingObserver()
        let broker = try Broker(directory: nil, limits: BrokerLimits(maxSubscriptionsPerSession: 3), observer: observer)
        defer { broker.close() }
        let c = broker.connect("s")
        let granted = try await c.session.handle(subscribe([("a", .atLeastOnce), ("b", .atMostOnce), ("$share/g/c", .atMostOnce)]))
        #expect(subscribeCodes(granted) == [.grantedQoS1, .grantedQoS0, .grantedQoS0], "at the limit: allowed")
        // One past it, in a packet that also replaces a held filter (with another QoS).
        let mixed = try await c.session.handle(subscribe([("d", .atMostOnce), ("a", .exactlyOnce)], id: 2))
        #expect(subscribeCodes(mixed) == [.quotaExceeded, .grantedQoS2])
        #expect(broker.info(name("s"))?.subscriptions == ["$share/g/c", "a", "b"])
        #expect(observer.count(.maxSubscriptionsPerSession, "s") == 1)
        // The refused filter delivers nothing; the held ones still do.
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("d", "no"))
        _ = try await pub.session.handle(publish("a", "yes"))
        #expect(c.sink.takePublishes().map(text) == ["yes"])
        // Unsubscribing makes room again.
        _ = try await c.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 3, topicFilters: ["b"])))
        #expect(subscribeCodes(try await c.session.handle(subscribe([("d", .atMostOnce)], id: 4))) == [.grantedQoS0])

        // Another session on the same broker has its own count.
        let other = broker.connect("other")
        let theirs = try await other.session.handle(subscribe([("a", .atMostOnce), ("x", .atMostOnce), ("y", .atMostOnce)]))
        #expect(subscribeCodes(theirs) == [.grantedQoS0, .grantedQoS0, .grantedQoS0])
        #expect(observer.count(.maxSubscriptionsPerSession, "other") == 0)
    }

    @Test func version311GetsTheFailureCode() async throws {
        let broker = try Broker(directory: nil, limits: BrokerLimits(maxSubscriptionsPerSession: 1))
        defer { broker.close() }
        let c = broker.connect("s", version: .mqtt3_1_1)
        let answers = try await c.session.handle(subscribe([("a", .atMostOnce), ("b", .atMostOnce)]))
        #expect(subscribeCodes(answers) == [.grantedQoS0, .unspecifiedError])
        #expect(MQTTReasonCode.unspecifiedError.rawValue == 0x80)
    }

    /// A persistent session's restored subscriptions count: after a restart it is still at its limit.
    @Test func restoredSubscriptionsCount() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let limits = BrokerLimits(maxSubscriptionsPerSession: 2)
        do {
            let broker = try Broker(directory: directory, limits: limits)
            let c = broker.connect("s", persistent: true)
            _ = try await c.session.handle(subscribe([("a", .atLeastOnce), ("b", .atLeastOnce)]))
            broker.close()
        }
        let broker = try Broker(directory: directory, limits: limits)
        defer { broker.close() }
        let c = broker.connect("s", persistent: true, present: true)
        let answers = try await c.session.handle(subscribe([("c", .atLeastOnce), ("b", .atMostOnce)]))
        #expect(subscribeCodes(answers) == [.quotaExceeded, .grantedQoS0])
        #expect(broker.info(name("s"))?.subscriptions == ["a", "b"])
    }
}
