import LMDBStorage
import MQTTCodec
import Testing

@testable import Broker

/// `queueMaxMessages`, `queueMaxBytes` and `queueOverflow`: a session's queue never passes
/// either bound; `dropOldest` drops its oldest queued messages (never one in flight), in memory
/// and on disk, `endSession` stops queueing and reports the session once; other sessions'
/// queues do not notice.
@Suite("Limits: session queues")
struct QueueLimitTests {
    /// A detached persistent session subscribed to `topic` at QoS 1.
    func offline(_ broker: Broker, _ session: String, _ topic: String = "t") async throws {
        let c = broker.connect(session, persistent: true)
        _ = try await c.session.handle(subscribe([(topic, .atLeastOnce)]))
        broker.detach(c.session)
    }

    func publishAll(_ broker: Broker, _ texts: [String], topic: String = "t") async throws {
        let pub = broker.connect("pub-\(topic)")
        for (index, body) in texts.enumerated() {
            let id = UInt16(index % 60_000 + 1)
            let answers = try await pub.session.handle(publish(topic, body, qos: .atLeastOnce, id: id))
            #expect(answers == [.puback(ack(id))])
        }
        broker.detach(pub.session)
    }

    @Test func dropOldestKeepsTheNewestInMemoryAndOnDisk() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let limits = BrokerLimits(queueMaxMessages: 3)
        do {
            let observer = RecordingObserver()
            let broker = try Broker(directory: directory, limits: limits, observer: observer)
            try await offline(broker, "full")
            try await offline(broker, "calm", "u")
            // At the limit: everything kept.
            try await publishAll(broker, (1...3).map { "\($0)" })
            #expect(broker.info(name("full"))?.queued == 3)
            #expect(broker.info(name("full"))?.dropped == 0)
            // Past it: the oldest go, one for each newcomer.
            try await publishAll(broker, (4...10).map { "\($0)" })
            #expect(broker.info(name("full"))?.queued == 3)
            #expect(broker.info(name("full"))?.dropped == 7)
            #expect(broker.totals.droppedQueueFull == 7)
            #expect(observer.count(.queueMaxMessages, "full") == 7)
            // Another session's queue is its own.
            try await publishAll(broker, ["a", "b"], topic: "u")
            #expect(broker.info(name("calm"))?.queued == 2)
            #expect(observer.count(.queueMaxMessages, "calm") == 0)
            broker.close()
        }
        // What was dropped left the disk too.
        let broker = try Broker(directory: directory, limits: limits)
        defer { broker.close() }
        let back = broker.connect("full", persistent: true, present: true)
        #expect(back.sink.takePublishes().map(text) == ["8", "9", "10"])
        let calm = broker.connect("calm", persistent: true, present: true)
        #expect(calm.sink.takePublishes().map(text) == ["a", "b"])
    }

    @Test func theByteBoundDropsAsManyAsItTakes() async throws {
        let observer = RecordingObserver()
        let broker = try Broker(directory: nil, limits: BrokerLimits(queueMaxBytes: 8), observer: observer)
        defer { broker.close() }
        try await offline(broker, "s")
        try await publishAll(broker, ["aaaa", "bbbb"])
        #expect(broker.info(name("s"))?.queuedBytes == 8, "at the limit")
        try await publishAll(broker, ["cccccccc"])
        #expect(broker.info(name("s"))?.queued == 1)
        #expect(broker.info(name("s"))?.dropped == 2)
        #expect(observer.count(.queueMaxBytes, "s") == 2)
        // Larger than a whole queue: the newcomer itself is the one dropped.
        try await publishAll(broker, ["123456789"])
        #expect(broker.info(name("s"))?.queued == 1)
        #expect(broker.info(name("s"))?.dropped == 3)
        let back = broker.connect("s", persistent: true, present: true)
        #expect(back.sink.takePublishes().map(text) == ["cccccccc"])
    }

    /// The queue is what waits behind the in-flight window of a connected session too; what is
    /// in flight is never dropped.
    @Test func inFlightMessagesAreNeverDropped() async throws {
        let broker = try Broker(directory: nil, limits: BrokerLimits(queueMaxMessages: 2))
        defer { broker.close() }
        let c = broker.connect("s", receiveMaximum: 2)
        _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
        try await publishAll(broker, (1...6).map { "\($0)" })
        let first = c.sink.takePublishes()
        #expect(first.map(text) == ["1", "2"])
        #expect(broker.info(name("s"))?.queued == 2)
        for p in first { _ = try await c.session.handle(.puback(ack(p.packetIdentifier!))) }
        #expect(c.sink.takePublishes().map(text) == ["5", "6"])
    }

    @Test func endSessionStopsQueueingAndReportsTheSessionOnce() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let observer = RecordingObserver()
        let broker = try Broker(
            directory: directory, limits: BrokerLimits(queueMaxMessages: 3, queueOverflow: .endSession), observer: observer)
        defer { broker.close() }
        try await offline(broker, "full")
        try await offline(broker, "calm", "u")
        try await publishAll(broker, (1...3).map { "\($0)" })
        #expect(observer.overflowed.isEmpty, "at the limit")
        try await publishAll(broker, (4...6).map { "\($0)" })
        #expect(observer.overflowed == ["full"])
        #expect(observer.count(.queueMaxMessages, "full") == 1)
        #expect(broker.info(name("full"))?.queued == 3)
        #expect(broker.info(name("full"))?.dropped == 0)
        try await publishAll(broker, ["a"], topic: "u")
        #expect(broker.info(name("calm"))?.queued == 1)
        // Until then a connection that resumes it gets its queue, and it queues again.
        let resumed = broker.connect("full", persistent: true, present: true, receiveMaximum: 1)
        #expect(resumed.sink.takePublishes().map(text) == ["1"])
        try await publishAll(broker, ["7"])
        #expect(broker.queuedTexts("full") == ["2", "3", "7"])
        broker.detach(resumed.session)
        // What the observer does next: the session's state goes, on disk too.
        try await broker.endSession(name("full"))
        #expect(broker.info(name("full")) == nil)
        let fresh = broker.connect("full", persistent: true)
        #expect(fresh.sink.takePublishes().isEmpty)
        #expect(broker.info(name("full"))?.subscriptions == [])
    }
}
