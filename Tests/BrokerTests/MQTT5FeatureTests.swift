import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

@Suite("MQTT 5 features")
struct MQTT5FeatureTests {
    @Test func messageExpiryIsDecrementedByTheTimeTheMessageWaited() async throws {
        let clock = ManualClock()
        let broker = try Broker(directory: nil, clock: { clock.now }, expirySweepInterval: nil)
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "ten", qos: .atLeastOnce, id: 1, properties: [.messageExpiryInterval(10)]))
        _ = try await pub.session.handle(publish("t", "forever", qos: .atLeastOnce, id: 2))
        clock.advance(seconds: 4)
        let back = broker.connect("sub", persistent: true, present: true)
        let got = back.sink.takePublishes()
        #expect(got.map(text) == ["ten", "forever"])
        #expect(got.map(\.properties.messageExpiryInterval) == [6, nil])
        // Live delivery: nothing waited, the interval is unchanged.
        _ = try await pub.session.handle(publish("t", "live", qos: .atLeastOnce, id: 3, properties: [.messageExpiryInterval(10)]))
        #expect(back.sink.takePublishes().map(\.properties.messageExpiryInterval) == [10])
    }

    @Test func expiredMessagesAreDroppedFromAnOfflineQueueAndFromTheStore() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let clock = ManualClock()
        do {
            let broker = try Broker(directory: directory, clock: { clock.now }, expirySweepInterval: nil)
            let sub = broker.connect("sub", persistent: true)
            _ = try await sub.session.handle(subscribe([("t", .exactlyOnce)]))
            broker.detach(sub.session)
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish("t", "short", qos: .atLeastOnce, id: 1, properties: [.messageExpiryInterval(3)]))
            _ = try await pub.session.handle(publish("t", "long", qos: .exactlyOnce, id: 2, properties: [.messageExpiryInterval(100)]))
            _ = try await pub.session.handle(publish("t", "forever", qos: .atLeastOnce, id: 3))
            _ = try await pub.session.handle(publish("t", "short too", qos: .atLeastOnce, id: 4, properties: [.messageExpiryInterval(2)]))
            #expect(broker.info(name("sub"))?.queued == 4)
            clock.advance(seconds: 5)
            #expect(broker.sweepExpired() == 2)
            #expect(broker.info(name("sub"))?.queued == 2)
            #expect(broker.info(name("sub"))?.expired == 2)
            broker.close()
        }
        // Gone from LMDB too: two messages and their two deliveries (plus one subscription) are left.
        do {
            let store = try BrokerStore(directory: directory)
            #expect(try store.count(.messages) == 2)
            #expect(try store.count(.sessions) == 3)
            store.close()
        }
        let broker = try Broker(directory: directory, clock: { clock.now }, expirySweepInterval: nil)
        defer { broker.close() }
        #expect(broker.info(name("sub"))?.queued == 2)
        let back = broker.connect("sub", persistent: true, present: true)
        let got = back.sink.takePublishes()
        #expect(got.map(text) == ["long", "forever"])
        #expect(got.map(\.properties.messageExpiryInterval) == [95, nil])
    }

    @Test func anExpiredMessageAtTheHeadOfTheQueueIsNotSent() async throws {
        let clock = ManualClock()
        let broker = try Broker(directory: nil, clock: { clock.now }, expirySweepInterval: nil)
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "stale", qos: .atLeastOnce, id: 1, properties: [.messageExpiryInterval(1)]))
        _ = try await pub.session.handle(publish("t", "fresh", qos: .atLeastOnce, id: 2))
        clock.advance(seconds: 2)
        let back = broker.connect("sub", persistent: true, present: true)
        #expect(back.sink.takePublishes().map(text) == ["fresh"])
        #expect(broker.info(name("sub"))?.expired == 1)
    }

    @Test func theSweepTimerRuns() async throws {
        let clock = ManualClock()
        let broker = try Broker(directory: nil, clock: { clock.now }, expirySweepInterval: .milliseconds(50))
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "x", qos: .atLeastOnce, id: 1, properties: [.messageExpiryInterval(1)]))
        #expect(broker.info(name("sub"))?.queued == 1)
        clock.advance(seconds: 2)
        for _ in 0..<200 where broker.info(name("sub"))?.queued != 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(broker.info(name("sub"))?.queued == 0)
    }

    /// The sweep's cost (printed, debug build): 100 offline sessions × 1000 queued messages,
    /// half of which expire; queues without expiring messages are not scanned again.
    @Test func sweepCost() async throws {
        let clock = ManualClock()
        let broker = try Broker(directory: nil, clock: { clock.now }, expirySweepInterval: nil)
        defer { broker.close() }
        for i in 0..<100 {
            let sub = broker.connect("s\(i)", persistent: true)
            _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
            broker.detach(sub.session)
        }
        let idle = broker.connect("idle", persistent: true)
        _ = try await idle.session.handle(subscribe([("quiet", .atLeastOnce)]))
        broker.detach(idle.session)
        let pub = broker.connect("pub")
        for i in 0..<1000 {
            let props: MQTTProperties = i % 2 == 0 ? [.messageExpiryInterval(10)] : [.messageExpiryInterval(1000)]
            _ = try await pub.session.handle(publish("t", "m", qos: .atLeastOnce, id: UInt16(i + 1), properties: props))
        }
        _ = try await pub.session.handle(publish("quiet", "no expiry", qos: .atLeastOnce, id: 1))
        clock.advance(seconds: 20)
        let ticks = ContinuousClock()
        let started = ticks.now
        let dropped = broker.sweepExpired()
        let first = ticks.now - started
        let again = ticks.now
        #expect(broker.sweepExpired() == 0)
        let second = ticks.now - again
        print("expiry sweep: \(dropped) of 100000 queued dropped in \(first); next sweep \(second) (debug build)")
        #expect(dropped == 50_000)
        #expect(broker.info(name("s0"))?.queued == 500)
        #expect(broker.info(name("idle"))?.queued == 1)
    }

    @Test func expiredRetainedMessagesAreNotSent() async throws {
        let clock = ManualClock()
        let broker = try Broker(directory: nil, clock: { clock.now }, expirySweepInterval: nil)
        defer { broker.close() }
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("r/a", "short", retain: true, properties: [.messageExpiryInterval(5)]))
        _ = try await pub.session.handle(publish("r/b", "long", retain: true, properties: [.messageExpiryInterval(50)]))
        clock.advance(seconds: 10)
        let sub = broker.connect("sub")
        let answers = try await sub.session.handle(subscribe([("r/#", .atMostOnce)]))
        let got = answers.compactMap { if case .publish(let p) = $0 { p } else { nil } }
        #expect(got.map(text) == ["long"])
        #expect(got.first?.properties.messageExpiryInterval == 40)
    }

    @Test func expiredRetainedMessagesLeaveTheStore() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let clock = ManualClock()
        do {
            let broker = try Broker(directory: directory, clock: { clock.now }, expirySweepInterval: nil)
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish("r/a", "short", qos: .atLeastOnce, id: 1, retain: true, properties: [.messageExpiryInterval(5)]))
            _ = try await pub.session.handle(publish("r/b", "long", qos: .atLeastOnce, id: 2, retain: true, properties: [.messageExpiryInterval(50)]))
            broker.close()
        }
        clock.advance(seconds: 10)
        do {
            // The receive time survived the restart: the short one has expired.
            let broker = try Broker(directory: directory, clock: { clock.now }, expirySweepInterval: nil)
            broker.sweepExpired()
            broker.close()
        }
        let store = try BrokerStore(directory: directory)
        defer { store.close() }
        #expect(try store.count(.retained) == 1)
    }

    @Test func subscriptionIdentifiersOnePerMatchingSubscription() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("a/+", .atLeastOnce)], id: 1, identifier: 7))
        _ = try await sub.session.handle(subscribe([("a/#", .atMostOnce)], id: 2, identifier: 9))
        _ = try await sub.session.handle(subscribe([("a/b", .atMostOnce)], id: 3))
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        _ = try await v3.session.handle(subscribe([("a/+", .atLeastOnce)], identifier: 7))
        let pub = broker.connect("pub")
        // The publisher's own Subscription Identifier is not passed on.
        _ = try await pub.session.handle(publish("a/b", "x", qos: .atLeastOnce, id: 1, properties: [.subscriptionIdentifier(99)]))
        _ = try await pub.session.handle(publish("a/c/d", "y", qos: .atLeastOnce, id: 2))
        let got = sub.sink.takePublishes()
        #expect(got.map(text) == ["x", "y"])
        #expect(got.first?.properties.subscriptionIdentifiers.sorted() == [7, 9])
        #expect(got.first?.qos == .atLeastOnce)
        #expect(got.last?.properties.subscriptionIdentifiers == [9])
        #expect(v3.sink.takePublishes().map(\.properties.subscriptionIdentifiers) == [[]])
    }

    @Test func payloadFormatIndicatorIsChecked() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .exactlyOnce)]))
        let pub = broker.connect("pub")
        let utf8: MQTTProperties = [.payloadFormatIndicator(.utf8)]
        func bad(_ qos: MQTTQoS, _ id: UInt16?) -> MQTTPacket {
            .publish(MQTTPublish(
                topicName: "t", payload: ByteBuffer(bytes: [0x61, 0xC3, 0x28]), qos: qos, packetIdentifier: id,
                properties: utf8))
        }
        #expect(try await pub.session.handle(bad(.atLeastOnce, 1)) == [.puback(ack(1, .payloadFormatInvalid))])
        #expect(try await pub.session.handle(bad(.exactlyOnce, 2)) == [.pubrec(ack(2, .payloadFormatInvalid))])
        #expect(broker.info(name("pub"))?.inboundAwaitingRelease == 0)
        await #expect(throws: BrokerError.self) { try await pub.session.handle(bad(.atMostOnce, nil)) }
        do {
            _ = try await pub.session.handle(bad(.atMostOnce, nil))
        } catch {
            #expect(error.reasonCode == .payloadFormatInvalid)
        }
        // Surrogates and overlong forms are not UTF-8 either.
        #expect(!Broker.isValidUTF8(ByteBuffer(bytes: [0xED, 0xA0, 0x80])))
        #expect(!Broker.isValidUTF8(ByteBuffer(bytes: [0xC0, 0xAF])))
        #expect(sub.sink.take().isEmpty)
        // Valid UTF-8 goes through with its indicator; without the indicator anything goes.
        _ = try await pub.session.handle(publish("t", "héllo €", qos: .atLeastOnce, id: 3, properties: utf8))
        _ = try await pub.session.handle(.publish(MQTTPublish(
            topicName: "t", payload: ByteBuffer(bytes: [0xFF]), qos: .atLeastOnce, packetIdentifier: 4)))
        let got = sub.sink.takePublishes()
        #expect(got.map { $0.payload.readableBytes } == [10, 1])
        #expect(got.first?.properties.payloadFormatIndicator == .utf8)
    }

    @Test func propertiesArePassedThroughUnchanged() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let clock = ManualClock()
        let props: MQTTProperties = [
            .payloadFormatIndicator(.utf8), .messageExpiryInterval(3600), .contentType("application/json"),
            .responseTopic("reply/here"), .correlationData(ByteBuffer(bytes: [0, 1, 2, 255])),
            .userProperty(MQTTUserProperty(name: "a", value: "1")), .userProperty(MQTTUserProperty(name: "a", value: "2")),
            .userProperty(MQTTUserProperty(name: "b", value: "")),
        ]
        do {
            let broker = try Broker(directory: directory, clock: { clock.now }, expirySweepInterval: nil)
            let live = broker.connect("live")
            _ = try await live.session.handle(subscribe([("t", .atLeastOnce)]))
            let stored = broker.connect("stored", persistent: true)
            _ = try await stored.session.handle(subscribe([("t", .exactlyOnce)]))
            broker.detach(stored.session)
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish("t", "{}", qos: .exactlyOnce, id: 1, properties: MQTTProperties(props.list + [.topicAlias(3)])))
            let got = live.sink.takePublishes()
            #expect(got.count == 1)
            #expect(got.first?.properties == props)
            broker.close()
        }
        // Through LMDB and a restart: the same properties, in the same order.
        let broker = try Broker(directory: directory, clock: { clock.now }, expirySweepInterval: nil)
        defer { broker.close() }
        let stored = broker.connect("stored", persistent: true, present: true)
        let got = stored.sink.takePublishes()
        #expect(got.count == 1)
        #expect(got.first?.properties == props)
        #expect(got.first?.qos == .exactlyOnce)
    }
}
