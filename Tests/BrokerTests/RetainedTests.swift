import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

@Suite("Retained messages")
struct RetainedTests {
    func subscribeWith(_ filter: String, _ qos: MQTTQoS, _ handling: MQTTRetainHandling = .sendOnSubscribe, id: UInt16 = 1)
        -> MQTTPacket
    {
        .subscribe(MQTTSubscribe(packetIdentifier: id, subscriptions: [
            MQTTSubscription(topicFilter: filter, options: MQTTSubscriptionOptions(qos: qos, retainHandling: handling)),
        ]))
    }

    @Test func aNewSubscriptionGetsTheRetainedMessagesAfterItsSubAck() async throws {
        let broker = try Broker(directory: nil)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("home/kitchen/temp", "21", qos: .atLeastOnce, id: 1, retain: true))
        _ = try await pub.session.handle(publish("home/hall/temp", "19", qos: .exactlyOnce, id: 2, retain: true))
        _ = try await pub.session.handle(publish("home/hall/temp", "18", qos: .exactlyOnce, id: 3, retain: true))
        _ = try await pub.session.handle(publish("home/other", "not retained", qos: .atLeastOnce, id: 4))
        _ = try await pub.session.handle(publish("$SYS/uptime", "5", retain: true))
        let sub = broker.connect("sub")
        let answers = try await sub.session.handle(subscribeWith("home/+/temp", .atLeastOnce))
        #expect(answers.first == .suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1])))
        let retained = answers.dropFirst().compactMap { if case .publish(let p) = $0 { p } else { nil } }
        #expect(retained.map(text) == ["21", "18"])
        #expect(retained.allSatisfy { $0.retain && $0.qos == .atLeastOnce && !$0.duplicate })
        #expect(retained.map(\.packetIdentifier) == [1, 2])
        #expect(broker.info(name("sub"))?.inflight == 2)
        #expect(sub.sink.take().isEmpty)
        // `#` does not match `$SYS/...`, `$SYS/#` does.
        let all = try await sub.session.handle(subscribeWith("#", .atMostOnce, id: 2))
        #expect(all.count == 1 + 2)
        let sys = try await sub.session.handle(subscribeWith("$SYS/#", .atMostOnce, id: 3))
        #expect(sys.dropFirst().compactMap { if case .publish(let p) = $0 { text(p) } else { nil } } == ["5"])
    }

    @Test func anEmptyPayloadDeletesTheRetainedMessage() async throws {
        let broker = try Broker(directory: nil)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "x", retain: true))
        let live = broker.connect("live")
        _ = try await live.session.handle(subscribeWith("t", .atMostOnce))
        _ = try await pub.session.handle(publish("t", "", retain: true))
        // The deleting message itself is forwarded to current subscribers.
        #expect(live.sink.takePublishes().map(text) == [""])
        let sub = broker.connect("sub")
        #expect(try await sub.session.handle(subscribeWith("t", .atMostOnce)).count == 1)
    }

    @Test func retainHandlingAndQoS() async throws {
        let broker = try Broker(directory: nil)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "x", qos: .exactlyOnce, id: 1, retain: true))
        let sub = broker.connect("sub")
        let first = try await sub.session.handle(subscribeWith("t", .atMostOnce, .sendOnNewSubscribe))
        #expect(first.count == 2)
        if case .publish(let p) = first.last { #expect(p.qos == .atMostOnce && p.retain && p.packetIdentifier == nil) }
        #expect(try await sub.session.handle(subscribeWith("t", .atMostOnce, .sendOnNewSubscribe)).count == 1)
        #expect(try await sub.session.handle(subscribeWith("t", .atMostOnce, .sendOnSubscribe)).count == 2)
        #expect(try await sub.session.handle(subscribeWith("t", .exactlyOnce, .doNotSend)).count == 1)
        // 3.1.1 always gets them, also on a repeated SUBSCRIBE.
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        #expect(try await v3.session.handle(subscribeWith("t", .exactlyOnce, .doNotSend)).count == 2)
        #expect(try await v3.session.handle(subscribeWith("t", .exactlyOnce, .doNotSend)).count == 2)
    }

    @Test func retainedMessagesAndTheirDeliveriesArePersistent() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish("a", "A", qos: .atLeastOnce, id: 1, retain: true))
            _ = try await pub.session.handle(publish("b", "B", qos: .atLeastOnce, id: 2, retain: true, properties: [.contentType("x/y")]))
            _ = try await pub.session.handle(publish("b", "", qos: .atLeastOnce, id: 3, retain: true))
            _ = try await pub.session.handle(publish("c", "C", retain: true))
            let sub = broker.connect("sub", persistent: true)
            let answers = try await sub.session.handle(subscribeWith("a", .atLeastOnce))
            #expect(answers.count == 2)
            // Unacknowledged when the broker stops.
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true, present: true)
        let again = sub.sink.takePublishes()
        #expect(again.map(text) == ["A"])
        #expect(again.allSatisfy { $0.duplicate && $0.retain })
        let other = broker.connect("other")
        let answers = try await other.session.handle(subscribeWith("#", .atLeastOnce))
        let texts = answers.compactMap { if case .publish(let p) = $0 { text(p) } else { nil } }
        #expect(Set(texts) == ["A", "C"])
    }
}
