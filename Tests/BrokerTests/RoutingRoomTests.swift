import CustodyTesting
import MQTTCodec
import Testing

@testable import Broker

/// `routingRoom` (what the cluster's consumer asks before it hands the broker more) and
/// `wantsFromCluster` (whether it decodes a JetStream message at all).
@Suite("Room in the connected sessions' queues")
struct RoutingRoomTests {
    @Test func theFullestMovingQueueOfAConnectedSessionSetsTheRoom() async throws {
        let clock = ManualClock()
        let broker = try Broker(
            directory: nil, limits: BrokerLimits(queueMaxMessages: 10, queueMaxBytes: 1_000), clock: { clock.now },
            expirySweepInterval: nil)
        defer { broker.close() }
        #expect(broker.routingRoom() == BrokerRoom(messages: 10, bytes: 1_000, limitMessages: 10, limitBytes: 1_000))

        let slow = broker.connect("slow", receiveMaximum: 2)
        _ = try await slow.session.handle(subscribe([("t", .atLeastOnce)]))
        // A detached persistent session's queue is its backlog: it does not count.
        let away = broker.connect("away", persistent: true)
        _ = try await away.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(away.session)

        try await broker.publishFromCluster((1...6).map { _ in MQTTPublish(topicName: "t", payload: payload("12345"), qos: .atLeastOnce) })
        // Two in flight, four queued (20 bytes).
        let sent = slow.sink.takePublishes()
        #expect(sent.count == 2)
        #expect(broker.routingRoom(stalledAfter: 2 * second) == BrokerRoom(messages: 6, bytes: 980, limitMessages: 10, limitBytes: 1_000))

        // An acknowledgement moves the queue: one more of room.
        _ = try await slow.session.handle(.puback(ack(sent[0].packetIdentifier!)))
        clock.advance(seconds: 1)
        #expect(broker.routingRoom(stalledAfter: 2 * second).messages == 7)
        clock.advance(seconds: 1)
        #expect(broker.routingRoom(stalledAfter: 2 * second).messages == 7, "not stalled yet")
        // A queue that has not moved for longer is a stalled client's: it holds nothing back.
        clock.advance(seconds: 2)
        #expect(broker.routingRoom(stalledAfter: 2 * second).messages == 10)
        // Messages its full queue drops to make room are no movement of it.
        try await broker.publishFromCluster((1...10).map { _ in MQTTPublish(topicName: "t", payload: payload("12345"), qos: .atLeastOnce) })
        #expect(broker.info(name("slow"))?.dropped ?? 0 > 0)
        #expect(broker.routingRoom(stalledAfter: 2 * second).messages == 10, "still stalled")
        // Not yet stalled by a longer measure, it is full; a source that cannot wait longer
        // passes over queues more than half full.
        #expect(broker.routingRoom(stalledAfter: 10 * second).messages == 0)
        #expect(broker.routingRoom(stalledAfter: 10 * second, slowerThanHalf: true).messages == 10)
        // Once it moves again it counts again.
        _ = try await slow.session.handle(.puback(ack(sent[1].packetIdentifier!)))
        #expect(broker.routingRoom(stalledAfter: 2 * second).messages == 1)
        // A session that leaves no longer counts.
        broker.detach(slow.session)
        #expect(broker.routingRoom(stalledAfter: 2 * second).messages == 10)
    }

    /// A broker nobody asks for room (a single node) keeps no list of backlogged sessions:
    /// it would hold every session that ever had a queue. The first look finds those that
    /// have one.
    @Test func noBacklogIsKeptUntilSomeoneAsks() async throws {
        let broker = try Broker(directory: nil, limits: BrokerLimits(queueMaxMessages: 10, queueMaxBytes: 1_000))
        defer { broker.close() }
        var clients: [Client] = []
        for index in 0..<3 {
            let client = broker.connect("c\(index)", receiveMaximum: 1)
            _ = try await client.session.handle(subscribe([("t", .atLeastOnce)]))
            clients.append(client)
        }
        try await broker.publishFromCluster((1...4).map { _ in MQTTPublish(topicName: "t", payload: payload("12345"), qos: .atLeastOnce) })
        #expect(broker.locked { broker.backlogged.isEmpty })
        for client in clients { broker.detach(client.session) }
        let kept = broker.connect("kept", receiveMaximum: 1)
        _ = try await kept.session.handle(subscribe([("t", .atLeastOnce)]))
        try await broker.publishFromCluster((1...4).map { _ in MQTTPublish(topicName: "t", payload: payload("12345"), qos: .atLeastOnce) })
        #expect(broker.routingRoom().messages == 7, "one in flight, three queued")
        #expect(broker.locked { broker.backlogged.count } == 1)
    }

    @Test func onlyPlainSubscriptionsWantClusterMessages() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        #expect(!broker.wantsFromCluster(topic: "a/b"))
        let client = broker.connect("c")
        _ = try await client.session.handle(subscribe([("a/+", .atLeastOnce), ("$share/g/s/#", .atLeastOnce)]))
        #expect(broker.wantsFromCluster(topic: "a/b"))
        #expect(!broker.wantsFromCluster(topic: "a/b/c"))
        // Shared subscriptions take cluster messages through their own consumers.
        #expect(!broker.wantsFromCluster(topic: "s/x"))
    }
}
