import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

@Suite("Shared subscriptions")
struct SharedSubscriptionTests {
    @Test func oneDeliveryPerGroupRoundRobinAcrossThreeMembers() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let members = [
            broker.connect("m1"), broker.connect("m2"), broker.connect("m3", version: .mqtt3_1_1),
        ]
        for member in members {
            let answer = try await member.session.handle(subscribe([("$share/g/t/+", .atLeastOnce)]))
            #expect(answer == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1]))])
        }
        // Another group on the same filter and a plain subscriber each get every message.
        let other = broker.connect("other")
        _ = try await other.session.handle(subscribe([("$share/h/t/#", .atMostOnce)]))
        let plain = broker.connect("plain")
        _ = try await plain.session.handle(subscribe([("t/+", .atMostOnce)]))

        let pub = broker.connect("pub")
        for i in 1...9 {
            let answer = try await pub.session.handle(publish("t/x", "\(i)", qos: .atLeastOnce, id: UInt16(i)))
            #expect(answer == [.puback(ack(UInt16(i)))])
        }
        let received = members.map { $0.sink.takePublishes() }
        #expect(received.map(\.count) == [3, 3, 3])
        #expect(received[0].map(text) == ["1", "4", "7"])
        #expect(received[1].map(text) == ["2", "5", "8"])
        #expect(received[2].map(text) == ["3", "6", "9"])
        #expect(received.joined().allSatisfy { $0.qos == .atLeastOnce && $0.topicName == "t/x" })
        #expect(other.sink.takePublishes().count == 9)
        #expect(plain.sink.takePublishes().count == 9)
        #expect(broker.info(name("m1"))?.subscriptions == ["$share/g/t/+"])
    }

    @Test func membersKeepWorkingWhenOneLeaves() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let a = broker.connect("a")
        let b = broker.connect("b", persistent: true)
        let c = broker.connect("c")
        for member in [a, b, c] {
            _ = try await member.session.handle(subscribe([("$share/g/t", .atLeastOnce)]))
        }
        let pub = broker.connect("pub")
        var id: UInt16 = 0
        func send(_ n: Int) async throws {
            for _ in 0..<n {
                id += 1
                _ = try await pub.session.handle(publish("t", "\(id)", qos: .atLeastOnce, id: id))
            }
        }
        try await send(3)
        #expect([a, b, c].map { $0.sink.takePublishes().count } == [1, 1, 1])

        // The persistent member goes offline: its share goes to the connected members only.
        broker.detach(b.session)
        try await send(4)
        #expect(a.sink.takePublishes().count == 2)
        #expect(c.sink.takePublishes().count == 2)
        #expect(broker.info(name("b"))?.queued == 0)

        // A non-persistent member leaving leaves the group (a member that unsubscribes too);
        // its session ends, and the three shares it had not acknowledged go to a.
        broker.detach(c.session)
        #expect(a.sink.takePublishes().map(text) == ["3", "5", "7"])
        #expect(broker.redistributedShares == 3)
        try await send(2)
        #expect(a.sink.takePublishes().count == 2)
        #expect(try await a.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 5, topicFilters: ["$share/g/t"])))
            == [.unsuback(MQTTUnsubAck(packetIdentifier: 5, reasonCodes: [.success]))])

        // Only an offline persistent member left: its queue keeps the messages until it returns.
        try await send(2)
        #expect(a.sink.takePublishes().isEmpty)
        #expect(broker.info(name("b"))?.queued == 2)
        let back = broker.connect("b", persistent: true, present: true)
        // Its unacknowledged share from before goes again (DUP), then the queued ones.
        let returned = back.sink.takePublishes()
        #expect(returned.map(text) == ["2", "\(id - 1)", "\(id)"])
        #expect(returned.map(\.duplicate) == [true, false, false])
        // A group nobody is in any more: nothing matches.
        _ = try await back.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 6, topicFilters: ["$share/g/t"])))
        id += 1
        #expect(try await pub.session.handle(publish("t", "none", qos: .atLeastOnce, id: id))
            == [.puback(ack(id, .noMatchingSubscribers))])
    }

    @Test func busyMembersAreSkippedWhileAnotherHasRoom() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let slow = broker.connect("slow", receiveMaximum: 1)
        let fast = broker.connect("fast", receiveMaximum: 100)
        _ = try await slow.session.handle(subscribe([("$share/g/t", .atLeastOnce)]))
        _ = try await fast.session.handle(subscribe([("$share/g/t", .atLeastOnce)]))
        let pub = broker.connect("pub")
        for i in 1...6 {
            _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i)))
        }
        // slow's window (1) is full after its first message; the rest go to fast.
        #expect(slow.sink.takePublishes().map(text) == ["1"])
        #expect(fast.sink.takePublishes().map(text) == ["2", "3", "4", "5", "6"])
        #expect(broker.info(name("slow"))?.queued == 0)
    }

    @Test func noLocalOnASharedSubscriptionIsAProtocolError() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let v5 = broker.connect("v5")
        await #expect(throws: BrokerError(.protocolError, "No Local on the shared subscription '$share/g/t' (MQTT-3.8.3-4)")) {
            try await v5.session.handle(subscribe([("ok", .atMostOnce), ("$share/g/t", .atMostOnce)], noLocal: true))
        }
        // Nothing of the refused SUBSCRIBE was kept.
        #expect(broker.info(name("v5"))?.subscriptions == [])
        // 3.1.1 has no No Local: its options are reduced to the QoS.
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        #expect(try await v3.session.handle(subscribe([("$share/g/t", .atMostOnce)], noLocal: true))
            == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS0]))])
    }

    @Test func invalidShareNamesAreRefusedInSubAck() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let v5 = broker.connect("v5")
        let answers = try await v5.session.handle(subscribe([
            ("$share//t", .atMostOnce), ("$share/a+b/t", .atMostOnce), ("$share/#/t", .atMostOnce),
            ("$share/g", .atMostOnce), ("$share/g/", .atMostOnce), ("$share/g/t", .atLeastOnce),
        ]))
        #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [
            .topicFilterInvalid, .topicFilterInvalid, .topicFilterInvalid, .topicFilterInvalid, .topicFilterInvalid,
            .grantedQoS1,
        ]))])
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        #expect(try await v3.session.handle(subscribe([("$share//t", .atMostOnce)]))
            == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [MQTTReasonCode(rawValue: 0x80)]))])
    }

    @Test func sharedSubscriptionsGetNoRetainedMessages() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "kept", retain: true))
        let sub = broker.connect("sub")
        #expect(try await sub.session.handle(subscribe([("$share/g/t", .atMostOnce)])).count == 1)
    }

    @Test func sharedSubscriptionsArePersistent() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let member = broker.connect("member", persistent: true)
            _ = try await member.session.handle(subscribe([("$share/g/t/#", .exactlyOnce)], identifier: 3))
            broker.detach(member.session)
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        #expect(broker.info(name("member"))?.subscriptions == ["$share/g/t/#"])
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t/a", "queued", qos: .exactlyOnce, id: 1))
        #expect(broker.info(name("member"))?.queued == 1)
        let member = broker.connect("member", persistent: true, present: true)
        let got = member.sink.takePublishes()
        #expect(got.map(text) == ["queued"])
        #expect(got.first?.properties.subscriptionIdentifiers == [3])
    }

    @Test func anEndingMemberHandsItsUnacknowledgedSharesToAnotherMember() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let a = broker.connect("a")  // non-persistent: its session ends with its connection
        let b = broker.connect("b", persistent: true)
        let c = broker.connect("c", persistent: true)
        for member in [a, b, c] {
            _ = try await member.session.handle(subscribe([("$share/g/t", .exactlyOnce)]))
        }
        let pub = broker.connect("pub")
        for i in 1...3 {
            _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i)))
        }
        func collect(_ client: Client, _ count: Int) async throws -> [MQTTPublish] {
            var got: [MQTTPublish] = []
            for _ in 0..<300 where got.count < count {
                got += client.sink.takePublishes()
                if got.count < count { try await Task.sleep(for: .milliseconds(10)) }
            }
            return got
        }
        #expect(try await collect(a, 1).map(text) == ["1"])
        #expect(try await collect(b, 1).map(text) == ["2"])
        #expect(try await collect(c, 1).map(text) == ["3"])
        // c goes offline (its session stays); a leaves without acknowledging "1", which goes
        // to b, the only connected member; so do "4" and "5".
        broker.detach(c.session)
        broker.detach(a.session)
        for i in 4...5 {
            _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i)))
        }
        let atB = try await collect(b, 3)
        #expect(atB.map(text) == ["1", "4", "5"])
        // c's session ends (expired by the ledger) with "3" unacknowledged: b gets it.
        try await broker.endSession(name("c"))
        let more = try await collect(b, 4 - atB.count)
        let all = (atB + more).map(text)
        #expect(Set(all) == ["1", "3", "4", "5"])
        #expect(all.count == 4)
        #expect(broker.redistributedShares == 2)
        // b acknowledges everything: nothing is left in the store but b's subscription.
        for p in atB + more { _ = try await b.session.handle(.puback(ack(p.packetIdentifier!))) }
        _ = try await b.session.handle(.puback(ack(1)))
        #expect(broker.info(name("b"))?.inflight == 0)
    }

    /// Throughput through one share (debug build, printed): 100 members, evenly served.
    @Test func aShareSpreadsEvenlyUnderLoad() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        let members = (0..<100).map { broker.connect("m\($0)") }
        for member in members {
            _ = try await member.session.handle(subscribe([("$share/workers/jobs/#", .atLeastOnce)]))
        }
        let pub = broker.connect("pub")
        let count = 20_000
        let clock = ContinuousClock()
        let started = clock.now
        for i in 0..<count {
            _ = try await pub.session.handle(publish("jobs/\(i % 7)", "j", qos: .atLeastOnce, id: UInt16(i % 60000 + 1)))
        }
        let elapsed = clock.now - started
        print("shared subscription, 100 members: \(count) QoS 1 messages in \(elapsed) (\(elapsed / count) each, debug build)")
        let counts = members.map { $0.sink.takePublishes().count }
        #expect(counts.allSatisfy { $0 == count / 100 })
    }
}
