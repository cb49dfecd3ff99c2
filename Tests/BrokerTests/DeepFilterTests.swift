import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// A filter may have as many levels as a packet has bytes: 65,535 `/` are 65,536 empty
/// levels. Subscribing, routing, unsubscribing and ending the session with one must not
/// recurse once per level (it overflowed the stack: any client could crash the broker).
@Suite("Deep filters")
struct DeepFilterTests {
    static let deep = String(repeating: "/", count: 65_535)

    @Test func aFilterOfSixtyFiveThousandLevelsIsRoutedAndRemovedWithoutRecursion() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let subscriber = broker.connect("deep")
        let publisher = broker.connect("pub")
        let granted = try await subscriber.session.handle(subscribe([(Self.deep, .atMostOnce), (Self.deep + "/#", .atMostOnce)]))
        #expect(granted == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS0, .grantedQoS0]))])
        _ = try await publisher.session.handle(publish(Self.deep, "x"))
        #expect(subscriber.sink.takePublishes().count == 1)
        let removed = try await subscriber.session.handle(.unsubscribe(MQTTUnsubscribe(
            packetIdentifier: 2, topicFilters: [Self.deep])))
        #expect(removed == [.unsuback(MQTTUnsubAck(packetIdentifier: 2, reasonCodes: [.success]))])
        _ = try await publisher.session.handle(publish(Self.deep + "/a", "y"))
        #expect(subscriber.sink.takePublishes().count == 1, "the `/#` subscription is still there")
        // The session ends with the deep `/#` subscription still in the tree.
        broker.detach(subscriber.session, publishWill: false)
        _ = try await publisher.session.handle(publish(Self.deep + "/a", "z"))
        #expect(subscriber.sink.takePublishes().isEmpty)
    }

    /// A broker closed (and freed) while a deep subscription is held frees the tree in a loop.
    @Test func aBrokerHoldingADeepSubscriptionIsFreed() async throws {
        var broker: Broker? = try Broker(directory: nil)
        let subscriber = broker!.connect("deep", persistent: true)
        _ = try await subscriber.session.handle(subscribe([(Self.deep + "/+", .atLeastOnce)]))
        broker!.close()
        broker = nil
        #expect(broker == nil)
    }
}
