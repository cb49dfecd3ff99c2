import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

// MARK: - Topics

/// (filter, topic, matches)
let matchingTable: [(String, String, Bool)] = [
    ("a/b", "a/b", true),
    ("a/b", "a/c", false),
    ("a/b", "a/b/c", false),
    ("a/+", "a/b", true),
    ("a/+", "a/b/c", false),
    ("a/+", "a", false),
    ("a/+", "a/", true),
    ("+/+", "a/b", true),
    ("+/+", "a", false),
    ("+/+", "/b", true),
    ("+/+", "a/b/c", false),
    ("+", "a", true),
    ("+", "/a", false),
    ("/+", "/a", true),
    ("#", "a", true),
    ("#", "a/b/c", true),
    ("#", "/", true),
    ("a/#", "a", true),
    ("a/#", "a/b", true),
    ("a/#", "a/b/c", true),
    ("a/#", "ab", false),
    ("a/#", "b/a", false),
    ("a/+/c", "a/b/c", true),
    ("a/+/c", "a/b/d", false),
    ("+/b/#", "x/b", true),
    ("+/b/#", "x/b/y/z", true),
    ("a//b", "a//b", true),
    ("a/+/b", "a//b", true),
    ("A/b", "a/b", false),
    // `$` topics: no wildcard match at the first level (4.7.2).
    ("#", "$SYS/broker/load", false),
    ("+/broker/load", "$SYS/broker/load", false),
    ("+", "$SYS", false),
    ("$SYS/#", "$SYS/broker/load", true),
    ("$SYS/+/load", "$SYS/broker/load", true),
    ("$SYS/#", "$SYS", true),
    ("a/#", "a/$b", true),
    ("a/+", "a/$b", true),
]

@Suite("Topics")
struct TopicTests {
    @Test(arguments: matchingTable.indices)
    func matchingRules(_ index: Int) {
        let (filter, topic, expected) = matchingTable[index]
        #expect(TopicRules.matches(filter: filter, topic: topic) == expected, "\(filter) vs \(topic)")
    }

    /// The same table through the broker's tree, a SUBSCRIBE and a PUBLISH.
    @Test(arguments: matchingTable.indices)
    func routingFollowsTheTable(_ index: Int) async throws {
        let (filter, topic, expected) = matchingTable[index]
        let broker = try Broker(directory: nil)
        let subscriber = broker.connect("sub")
        let publisher = broker.connect("pub")
        let answers = try await subscriber.session.handle(subscribe([(filter, .atMostOnce)]))
        #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS0]))])
        _ = try await publisher.session.handle(publish(topic, "x"))
        #expect(subscriber.sink.takePublishes().count == (expected ? 1 : 0), "\(filter) vs \(topic)")
    }

    @Test func filterValidation() {
        for valid in ["a", "a/b", "/", "+", "#", "+/+", "a/#", "+/#", "a//b", "$SYS/#", "a/+/b", "€/+"] {
            #expect(TopicRules.checkFilter(valid) == nil, "\(valid)")
        }
        for invalid in ["", "a/#/b", "a#", "#a", "a/b#", "a+", "+a", "a/+b", "##", "a/\u{0}"] {
            #expect(TopicRules.checkFilter(invalid) != nil, "\(invalid)")
        }
        for valid in ["$share/g/a", "$share/g/#", "$share/group-1/a/+/b", "$share/g//"] {
            #expect(TopicRules.checkFilter(valid) == nil, "\(valid)")
        }
        for invalid in ["$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/#/a", "$share/g/a#"] {
            #expect(TopicRules.checkFilter(invalid) != nil, "\(invalid)")
        }
        #expect(TopicRules.checkFilter("$share/g+/a") == .invalidShare)
        #expect(TopicRules.isValidTopicName("a/b"))
        #expect(!TopicRules.isValidTopicName("a/+"))
        #expect(!TopicRules.isValidTopicName("a/#"))
        #expect(!TopicRules.isValidTopicName(""))
    }

    @Test func invalidFiltersAreRefusedInSubAck() async throws {
        let broker = try Broker(directory: nil)
        let v5 = broker.connect("v5")
        let answers = try await v5.session.handle(subscribe([("a/#/b", .atLeastOnce), ("ok/+", .exactlyOnce), ("$share/g+/t", .atMostOnce), ("x+", .atMostOnce), ("$share//t", .atMostOnce)]))
        #expect(answers == [.suback(MQTTSubAck(
            packetIdentifier: 1,
            reasonCodes: [.topicFilterInvalid, .grantedQoS2, .topicFilterInvalid, .topicFilterInvalid, .topicFilterInvalid]))])
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        let answers3 = try await v3.session.handle(subscribe([("a/#/b", .atLeastOnce), ("ok", .atLeastOnce)]))
        #expect(answers3 == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [MQTTReasonCode(rawValue: 0x80), .grantedQoS1]))])
        #expect(broker.info(name("v5"))?.subscriptions == ["ok/+"])
    }

    @Test func unsubscribe() async throws {
        let broker = try Broker(directory: nil)
        let c = broker.connect("c")
        _ = try await c.session.handle(subscribe([("a/+", .atLeastOnce), ("b", .atMostOnce)]))
        let answers = try await c.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 9, topicFilters: ["a/+", "nope"])))
        #expect(answers == [.unsuback(MQTTUnsubAck(packetIdentifier: 9, reasonCodes: [.success, .noSubscriptionExisted]))])
        _ = try await c.session.handle(publish("a/x", "1"))
        _ = try await c.session.handle(publish("b", "2"))
        #expect(c.sink.takePublishes().map(text) == ["2"])
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        let answers3 = try await v3.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 4, topicFilters: ["x"])))
        #expect(answers3 == [.unsuback(MQTTUnsubAck(packetIdentifier: 4))])
    }
}

// MARK: - Routing

@Suite("Routing")
struct RoutingTests {
    @Test func overlappingSubscriptionsGiveOneCopyAtTheHighestQoSWithEveryIdentifier() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("a/+", .atMostOnce)], id: 1, identifier: 11))
        _ = try await sub.session.handle(subscribe([("a/#", .exactlyOnce)], id: 2, identifier: 22))
        _ = try await sub.session.handle(subscribe([("#", .atLeastOnce)], id: 3))
        let pub = broker.connect("pub")
        let answers = try await pub.session.handle(publish("a/b", "m", qos: .exactlyOnce, id: 5))
        #expect(answers == [.pubrec(ack(5))])
        let got = sub.sink.takePublishes()
        #expect(got.count == 1)
        #expect(got.first?.qos == .exactlyOnce)
        #expect(Set(got.first?.properties.subscriptionIdentifiers ?? []) == [11, 22])
        // A 3.1.1 subscriber gets one copy too.
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        _ = try await v3.session.handle(subscribe([("a/b", .atLeastOnce), ("a/+", .atMostOnce)]))
        _ = try await pub.session.handle(publish("a/b", "n", qos: .exactlyOnce, id: 6))
        #expect(v3.sink.takePublishes().map(\.qos) == [.atLeastOnce])
    }

    @Test func qosIsDowngradedToTheSubscription() async throws {
        let broker = try Broker(directory: nil)
        let q0 = broker.connect("q0"), q1 = broker.connect("q1"), q2 = broker.connect("q2")
        _ = try await q0.session.handle(subscribe([("t", .atMostOnce)]))
        _ = try await q1.session.handle(subscribe([("t", .atLeastOnce)]))
        _ = try await q2.session.handle(subscribe([("t", .exactlyOnce)]))
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "two", qos: .exactlyOnce, id: 1))
        _ = try await pub.session.handle(publish("t", "one", qos: .atLeastOnce, id: 2))
        #expect(q0.sink.takePublishes().map(\.qos) == [.atMostOnce, .atMostOnce])
        #expect(q1.sink.takePublishes().map(\.qos) == [.atLeastOnce, .atLeastOnce])
        let two = q2.sink.takePublishes()
        #expect(two.map(\.qos) == [.exactlyOnce, .atLeastOnce])
        #expect(two.map(\.packetIdentifier) == [1, 2])
        #expect(two.allSatisfy { !$0.duplicate && !$0.retain })
    }

    @Test func noLocalSkipsOnlyThePublisher() async throws {
        let broker = try Broker(directory: nil)
        let a = broker.connect("a"), b = broker.connect("b")
        _ = try await a.session.handle(subscribe([("chat", .atMostOnce)], noLocal: true))
        _ = try await b.session.handle(subscribe([("chat", .atMostOnce)], noLocal: true))
        _ = try await a.session.handle(publish("chat", "from a"))
        #expect(a.sink.takePublishes().isEmpty)
        #expect(b.sink.takePublishes().map(text) == ["from a"])
        // Another, overlapping subscription without No Local still delivers.
        _ = try await a.session.handle(subscribe([("#", .atMostOnce)], id: 2))
        _ = try await a.session.handle(publish("chat", "again"))
        #expect(a.sink.takePublishes().map(text) == ["again"])
    }

    @Test func noMatchingSubscribersInV5Acks() async throws {
        let broker = try Broker(directory: nil)
        let v5 = broker.connect("v5"), v3 = broker.connect("v3", version: .mqtt3_1_1)
        #expect(try await v5.session.handle(publish("none", "x", qos: .atLeastOnce, id: 3)) == [.puback(ack(3, .noMatchingSubscribers))])
        #expect(try await v3.session.handle(publish("none", "x", qos: .atLeastOnce, id: 3)) == [.puback(ack(3))])
    }

    @Test func retainFlagFollowsRetainAsPublished() async throws {
        let broker = try Broker(directory: nil)
        let plain = broker.connect("plain"), rap = broker.connect("rap")
        _ = try await plain.session.handle(subscribe([("t", .atLeastOnce)]))
        _ = try await rap.session.handle(.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [
            MQTTSubscription(topicFilter: "t", options: MQTTSubscriptionOptions(qos: .atLeastOnce, retainAsPublished: true)),
        ])))
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "r", qos: .atLeastOnce, id: 1, retain: true))
        #expect(plain.sink.takePublishes().map(\.retain) == [false])
        #expect(rap.sink.takePublishes().map(\.retain) == [true])
    }

    @Test func propertiesTravelButTopicAliasDoesNot() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        let pub = broker.connect("pub")
        let props: MQTTProperties = [.contentType("text/plain"), .topicAlias(3), .userProperty(MQTTUserProperty(name: "k", value: "v"))]
        _ = try await pub.session.handle(publish("t", "x", qos: .atLeastOnce, id: 1, properties: props))
        let got = try #require(sub.sink.takePublishes().first)
        #expect(got.properties.contentType == "text/plain")
        #expect(got.properties.topicAlias == nil)
        #expect(got.properties.userProperties == [MQTTUserProperty(name: "k", value: "v")])
    }

    @Test func orderIsKeptPerTopic() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub", receiveMaximum: 3)
        _ = try await sub.session.handle(subscribe([("t/#", .exactlyOnce)]))
        let pub = broker.connect("pub")
        for i in 1...50 {
            let qos: MQTTQoS = i % 2 == 0 ? .atLeastOnce : .exactlyOnce
            _ = try await pub.session.handle(publish("t/x", "\(i)", qos: qos, id: UInt16(i)))
        }
        var seen: [String] = []
        // Acknowledge as they come: the window lets the rest out in order.
        while seen.count < 50 {
            let got = sub.sink.take()
            #expect(!got.isEmpty)
            if got.isEmpty { break }
            for packet in got {
                guard case .publish(let p) = packet else {
                    if case .pubrel(let r) = packet { _ = try await sub.session.handle(.pubcomp(ack(r.packetIdentifier))) }
                    continue
                }
                seen.append(text(p))
                if p.qos == .atLeastOnce {
                    _ = try await sub.session.handle(.puback(ack(p.packetIdentifier!)))
                } else {
                    let answer = try await sub.session.handle(.pubrec(ack(p.packetIdentifier!)))
                    #expect(answer == [.pubrel(ack(p.packetIdentifier!))])
                    _ = try await sub.session.handle(.pubcomp(ack(p.packetIdentifier!)))
                }
            }
        }
        #expect(seen == (1...50).map { "\($0)" })
    }

    @Test func publishToInvalidTopicIsRefused() async throws {
        let broker = try Broker(directory: nil)
        let c = broker.connect("c")
        await #expect(throws: BrokerError.self) { _ = try await c.session.handle(publish("", "x")) }
        await #expect(throws: BrokerError.self) { _ = try await c.session.handle(.pingreq) }
    }
}

// MARK: - QoS flows

@Suite("QoS flows")
struct QoSFlowTests {
    @Test func qos2InboundIsDeliveredExactlyOnce() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .exactlyOnce)]))
        let pub = broker.connect("pub")
        #expect(try await pub.session.handle(publish("t", "once", qos: .exactlyOnce, id: 7)) == [.pubrec(ack(7))])
        // The client resends (DUP) before PUBREL: acknowledged again, not delivered again.
        var again = MQTTPublish(topicName: "t", payload: payload("once"), qos: .exactlyOnce, duplicate: true, packetIdentifier: 7)
        #expect(try await pub.session.handle(.publish(again)) == [.pubrec(ack(7))])
        #expect(sub.sink.takePublishes().count == 1)
        #expect(broker.info(name("pub"))?.inboundAwaitingRelease == 1)
        #expect(try await pub.session.handle(.pubrel(ack(7))) == [.pubcomp(ack(7))])
        #expect(broker.info(name("pub"))?.inboundAwaitingRelease == 0)
        // PUBREL for an identifier not awaiting release: PUBCOMP 0x92 in v5, not an error.
        #expect(try await pub.session.handle(.pubrel(ack(7))) == [.pubcomp(ack(7, .packetIdentifierNotFound))])
        // After PUBCOMP the identifier is free: a new message with it is delivered.
        again.duplicate = false
        again.payload = payload("next")
        _ = try await pub.session.handle(.publish(again))
        #expect(sub.sink.takePublishes().map(text) == ["next"])
        let v3 = broker.connect("v3", version: .mqtt3_1_1)
        #expect(try await v3.session.handle(.pubrel(ack(9))) == [.pubcomp(ack(9))])
    }

    @Test func outboundQoS2Flow() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .exactlyOnce)]))
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "x", qos: .exactlyOnce, id: 1))
        let got = try #require(sub.sink.takePublishes().first)
        let id = try #require(got.packetIdentifier)
        #expect(try await sub.session.handle(.pubrec(ack(id))) == [.pubrel(ack(id))])
        // A repeated PUBREC gets the PUBREL again.
        #expect(try await sub.session.handle(.pubrec(ack(id))) == [.pubrel(ack(id))])
        #expect(broker.info(name("sub"))?.inflight == 1)
        #expect(try await sub.session.handle(.pubcomp(ack(id))) == [])
        #expect(broker.info(name("sub"))?.inflight == 0)
        // PUBREC for an unknown identifier: PUBREL 0x92.
        #expect(try await sub.session.handle(.pubrec(ack(999))) == [.pubrel(ack(999, .packetIdentifierNotFound))])
        // A PUBREC with a failure code ends the flow without PUBREL.
        _ = try await pub.session.handle(publish("t", "y", qos: .exactlyOnce, id: 2))
        let second = try #require(sub.sink.takePublishes().first?.packetIdentifier)
        #expect(try await sub.session.handle(.pubrec(ack(second, .unspecifiedError))) == [])
        #expect(broker.info(name("sub"))?.inflight == 0)
        // PUBACK for a QoS 2 flow is a protocol error.
        _ = try await pub.session.handle(publish("t", "z", qos: .exactlyOnce, id: 3))
        let third = try #require(sub.sink.takePublishes().first?.packetIdentifier)
        await #expect(throws: BrokerError.self) { _ = try await sub.session.handle(.puback(ack(third))) }
    }

    @Test func packetIdentifiersAndInflightWindow() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub", receiveMaximum: 2)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        let pub = broker.connect("pub")
        for i in 1...5 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i))) }
        var got = sub.sink.takePublishes()
        #expect(got.map(text) == ["1", "2"])
        #expect(got.map(\.packetIdentifier) == [1, 2])
        #expect(broker.info(name("sub"))?.queued == 3)
        // Releasing identifier 2 lets one more out, with the next free identifier.
        _ = try await sub.session.handle(.puback(ack(2)))
        got = sub.sink.takePublishes()
        #expect(got.map(text) == ["3"])
        #expect(got.map(\.packetIdentifier) == [3])
        _ = try await sub.session.handle(.puback(ack(1)))
        _ = try await sub.session.handle(.puback(ack(3)))
        got = sub.sink.takePublishes()
        #expect(got.map(text) == ["4", "5"])
        #expect(got.map(\.packetIdentifier) == [4, 5])
        // A stray PUBACK changes nothing.
        _ = try await sub.session.handle(.puback(ack(77)))
        #expect(broker.info(name("sub"))?.inflight == 2)
        // QoS 0 does not use the window.
        _ = try await pub.session.handle(publish("t", "zero"))
        #expect(sub.sink.takePublishes().map(text) == ["zero"])
    }

    @Test func messagesOverTheClientsMaximumPacketSizeAreSkippedAsIfDelivered() async throws {
        let broker = try Broker(directory: nil)
        let sink = RecordingSink()
        let sub = broker.attach(
            session: name("sub"), persistent: true, sessionPresent: false, protocolVersion: .mqtt5,
            receiveMaximum: 1, maximumPacketSize: 100, sink: sink)
        _ = try await sub.handle(subscribe([("t", .atLeastOnce)]))
        let pub = broker.connect("pub")
        let big = String(repeating: "x", count: 200)
        _ = try await pub.session.handle(publish("t", big, qos: .atLeastOnce, id: 1))
        _ = try await pub.session.handle(publish("t", big))
        _ = try await pub.session.handle(publish("t", "small", qos: .atLeastOnce, id: 2))
        // The window of one was not blocked by the message that could not be sent.
        #expect(sink.takePublishes().map(text) == ["small"])
        #expect(broker.info(name("sub"))?.discardedTooLarge == 2)
        #expect(broker.info(name("sub"))?.inflight == 1)
    }

    @Test func packetIdentifiersWrapAndSkipThoseInUse() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        sub.session.state.nextPacketIdentifier = 65534
        let pub = broker.connect("pub")
        for i in 1...3 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: 1)) }
        #expect(sub.sink.takePublishes().map(\.packetIdentifier) == [65534, 65535, 1])
        _ = try await sub.session.handle(.puback(ack(65535)))
        sub.session.state.nextPacketIdentifier = 65534
        _ = try await pub.session.handle(publish("t", "4", qos: .atLeastOnce, id: 1))
        _ = try await pub.session.handle(publish("t", "5", qos: .atLeastOnce, id: 1))
        #expect(sub.sink.takePublishes().map(\.packetIdentifier) == [65535, 2])
    }
}

// MARK: - Sessions

@Suite("Sessions")
struct SessionTests {
    @Test func offlineQueueDropsTheOldest() async throws {
        let broker = try Broker(directory: nil, limits: BrokerLimits(queueMaxMessages: 3))
        var sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        for i in 1...5 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i))) }
        // QoS 0 is not queued for a detached session.
        _ = try await pub.session.handle(publish("t", "zero"))
        let info = try #require(broker.info(name("sub")))
        #expect(info.queued == 3)
        #expect(info.dropped == 2)
        #expect(broker.totals.droppedQueueFull == 2)
        sub = broker.connect("sub", persistent: true, present: true)
        let got = sub.sink.takePublishes()
        #expect(got.map(text) == ["3", "4", "5"])
        #expect(got.allSatisfy { !$0.duplicate })
    }

    @Test func unacknowledgedMessagesAreRedeliveredWithDUP() async throws {
        let broker = try Broker(directory: nil)
        var sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .exactlyOnce)]))
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "one", qos: .atLeastOnce, id: 1))
        _ = try await pub.session.handle(publish("t", "two", qos: .exactlyOnce, id: 2))
        _ = try await pub.session.handle(publish("t", "three", qos: .exactlyOnce, id: 3))
        let first = sub.sink.takePublishes()
        #expect(first.map(\.packetIdentifier) == [1, 2, 3])
        #expect(try await sub.session.handle(.pubrec(ack(3))) == [.pubrel(ack(3))])
        broker.detach(sub.session)
        _ = try await pub.session.handle(publish("t", "four", qos: .atLeastOnce, id: 4))
        sub = broker.connect("sub", persistent: true, present: true)
        let again = sub.sink.take()
        #expect(again.count == 4)
        guard again.count == 4 else { return }
        #expect(again[0] == .publish(MQTTPublish(topicName: "t", payload: payload("one"), qos: .atLeastOnce, duplicate: true, packetIdentifier: 1)))
        #expect(again[1] == .publish(MQTTPublish(topicName: "t", payload: payload("two"), qos: .exactlyOnce, duplicate: true, packetIdentifier: 2)))
        #expect(again[2] == .pubrel(ack(3)))
        #expect(again[3] == .publish(MQTTPublish(topicName: "t", payload: payload("four"), qos: .atLeastOnce, packetIdentifier: 4)))
    }

    @Test func cleanStartDiscardsTheOldSession() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "old", qos: .atLeastOnce, id: 1))
        let fresh = broker.connect("sub", persistent: true, present: false)
        #expect(fresh.sink.take().isEmpty)
        #expect(broker.info(name("sub"))?.subscriptions == [])
        _ = try await pub.session.handle(publish("t", "new", qos: .atLeastOnce, id: 2))
        #expect(fresh.sink.take().isEmpty)
    }

    @Test func nonPersistentSessionsEndWithTheirConnection() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub")
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        #expect(broker.info(name("sub")) == nil)
        let pub = broker.connect("pub")
        #expect(try await pub.session.handle(publish("t", "x", qos: .atLeastOnce, id: 1)) == [.puback(ack(1, .noMatchingSubscribers))])
    }

    @Test func takeoverMovesTheSessionAndStalesTheOldConnection() async throws {
        let broker = try Broker(directory: nil)
        let old = broker.connect("s", persistent: true)
        _ = try await old.session.handle(subscribe([("t", .atLeastOnce)]))
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "a", qos: .atLeastOnce, id: 1))
        #expect(old.sink.takePublishes().count == 1)
        let new = broker.connect("s", persistent: true, present: true)
        #expect(new.sink.takePublishes().map(\.duplicate) == [true])
        await #expect(throws: BrokerError(.sessionTakenOver, "session s is no longer attached to this connection")) {
            _ = try await old.session.handle(.puback(ack(1)))
        }
        broker.detach(old.session)  // late: changes nothing
        #expect(broker.info(name("s"))?.attached == true)
        _ = try await pub.session.handle(publish("t", "b", qos: .atLeastOnce, id: 2))
        #expect(new.sink.takePublishes().map(text) == ["b"])
        #expect(old.sink.take().isEmpty)
    }

    @Test func expiredMessagesAreNotDelivered() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "short", qos: .atLeastOnce, id: 1, properties: [.messageExpiryInterval(1)]))
        _ = try await pub.session.handle(publish("t", "long", qos: .atLeastOnce, id: 2, properties: [.messageExpiryInterval(100)]))
        try await Task.sleep(for: .milliseconds(1100))
        let back = broker.connect("sub", persistent: true, present: true)
        let got = back.sink.takePublishes()
        #expect(got.map(text) == ["long"])
        #expect((got.first?.properties.messageExpiryInterval ?? 0) <= 99)
    }
}
