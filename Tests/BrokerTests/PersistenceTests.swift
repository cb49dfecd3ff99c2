import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// Real LMDB in a temporary directory: state written by one broker is read by the next.
@Suite("Persistence")
struct PersistenceTests {
    func storedCounts(_ directory: String) throws -> (messages: Int, sessions: Int) {
        let store = try BrokerStore(directory: directory)
        defer { store.close() }
        return (try store.count(.messages), try store.count(.sessions))
    }

    @Test func subscriptionsAndQueuedMessagesSurviveCloseAndReopen() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let sub = broker.connect("sub", persistent: true)
            let answers = try await sub.session.handle(subscribe([("t/+", .exactlyOnce)], identifier: 42))
            #expect(answers == [.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS2]))])
            broker.detach(sub.session)
            let pub = broker.connect("pub")
            let props: MQTTProperties = [.contentType("text/plain"), .userProperty(MQTTUserProperty(name: "k", value: "v"))]
            #expect(try await pub.session.handle(publish("t/a", "one", qos: .atLeastOnce, id: 1, properties: props)) == [.puback(ack(1))])
            #expect(try await pub.session.handle(publish("t/b", "two", qos: .exactlyOnce, id: 2)) == [.pubrec(ack(2))])
            _ = try await pub.session.handle(publish("t/c", "zero"))
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        #expect(broker.sessionNames == [name("sub")])
        let info = try #require(broker.info(name("sub")))
        #expect(info.subscriptions == ["t/+"])
        #expect(info.queued == 2)
        let sub = broker.connect("sub", persistent: true, present: true)
        let got = sub.sink.takePublishes()
        #expect(got.map(text) == ["one", "two"])
        #expect(got.map(\.qos) == [.atLeastOnce, .exactlyOnce])
        #expect(got.first?.properties.contentType == "text/plain")
        #expect(got.first?.properties.userProperties == [MQTTUserProperty(name: "k", value: "v")])
        #expect(got.map(\.properties.subscriptionIdentifiers) == [[42], [42]])
        #expect(got.allSatisfy { !$0.duplicate })
        // The subscription itself came back: new messages are routed.
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t/z", "three", qos: .atLeastOnce, id: 3))
        #expect(sub.sink.takePublishes().map(text) == ["three"])
    }

    @Test func inflightMessagesComeBackWithDUPAndPubrelsAreResent() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let sub = broker.connect("sub", persistent: true)
            _ = try await sub.session.handle(subscribe([("t", .exactlyOnce)]))
            let pub = broker.connect("pub")
            for i in 1...3 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .exactlyOnce, id: UInt16(i))) }
            #expect(sub.sink.takePublishes().map(\.packetIdentifier) == [1, 2, 3])
            _ = try await sub.session.handle(.pubrec(ack(1)))
            _ = try await sub.session.handle(.pubrec(ack(2)))
            _ = try await sub.session.handle(.pubcomp(ack(2)))
            // Not waited for by the protocol; a fresh PUBLISH's commit comes after them (FIFO).
            _ = try await pub.session.handle(publish("t", "4", qos: .exactlyOnce, id: 4))
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true, present: true)
        let again = sub.sink.take()
        #expect(again == [
            .pubrel(ack(1)),
            .publish(MQTTPublish(topicName: "t", payload: payload("3"), qos: .exactlyOnce, duplicate: true, packetIdentifier: 3)),
            .publish(MQTTPublish(topicName: "t", payload: payload("4"), qos: .exactlyOnce, duplicate: true, packetIdentifier: 4)),
        ])
        _ = try await sub.session.handle(.pubcomp(ack(1)))
        _ = try await sub.session.handle(.pubrec(ack(3)))
        _ = try await sub.session.handle(.pubcomp(ack(3)))
        _ = try await sub.session.handle(.pubrec(ack(4)))
        _ = try await sub.session.handle(.pubcomp(ack(4)))
        broker.close()
        let counts = try storedCounts(directory)
        #expect(counts.messages == 0)
        #expect(counts.sessions == 1)  // the subscription
    }

    @Test func inboundQoS2IdentifiersSurviveARestart() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let sub = broker.connect("sub", persistent: true)
            _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
            broker.detach(sub.session)
            let pub = broker.connect("pub", persistent: true)
            #expect(try await pub.session.handle(publish("t", "x", qos: .exactlyOnce, id: 9)) == [.pubrec(ack(9))])
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let pub = broker.connect("pub", persistent: true, present: true)
        // The publisher never saw PUBREC and resends: not delivered a second time.
        let dup = MQTTPublish(topicName: "t", payload: payload("x"), qos: .exactlyOnce, duplicate: true, packetIdentifier: 9)
        #expect(try await pub.session.handle(.publish(dup)) == [.pubrec(ack(9))])
        #expect(try await pub.session.handle(.pubrel(ack(9))) == [.pubcomp(ack(9))])
        let sub = broker.connect("sub", persistent: true, present: true)
        #expect(sub.sink.takePublishes().map(text) == ["x"])
    }

    @Test func endSessionDropsDiskState() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            for s in ["a", "b"] {
                let c = broker.connect(s, persistent: true)
                _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
                broker.detach(c.session)
            }
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish("t", "m", qos: .atLeastOnce, id: 1))
            try await broker.endSession(name("a"))
            #expect(broker.info(name("a")) == nil)
            // A PUBLISH now reaches b only.
            #expect(broker.info(name("b"))?.queued == 1)
            broker.close()
        }
        do {
            let broker = try Broker(directory: directory)
            #expect(broker.sessionNames == [name("b")])
            try await broker.endSession(name("b"))
            try await broker.endSession(name("never-existed"))
            broker.close()
        }
        let counts = try storedCounts(directory)
        #expect(counts.messages == 0)
        #expect(counts.sessions == 0)
    }

    @Test func endSessionLeavesAnAttachedSessionAlone() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let c = broker.connect("a", persistent: true)
        _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
        try await broker.endSession(name("a"))
        #expect(broker.info(name("a"))?.subscriptions == ["t"])
    }

    @Test func retainOnlyDropsEverySessionNotLive() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            for s in ["keep", "drop1", "drop2"] {
                let c = broker.connect(s, persistent: true)
                _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
                broker.detach(c.session)
            }
            let pub = broker.connect("pub")
            _ = try await pub.session.handle(publish("t", "m", qos: .atLeastOnce, id: 1))
            broker.close()
        }
        do {
            let broker = try Broker(directory: directory)
            #expect(broker.sessionNames == [name("keep"), name("drop1"), name("drop2")])
            try await broker.retainOnly(live: [name("keep"), name("unrelated")])
            #expect(broker.sessionNames == [name("keep")])
            broker.close()
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        #expect(broker.sessionNames == [name("keep")])
        let keep = broker.connect("keep", persistent: true, present: true)
        #expect(keep.sink.takePublishes().map(text) == ["m"])
        _ = try await keep.session.handle(.puback(ack(1)))
        broker.close()
        let counts = try storedCounts(directory)
        #expect(counts.messages == 0)
        #expect(counts.sessions == 1)
    }

    @Test func oneStoredCopyPerMessageWhateverTheFanOut() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        for i in 0..<20 {
            let c = broker.connect("s\(i)", persistent: true)
            _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
            broker.detach(c.session)
        }
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "m", qos: .atLeastOnce, id: 1))
        broker.close()
        let counts = try storedCounts(directory)
        #expect(counts.messages == 1)
        #expect(counts.sessions == 40)  // 20 subscriptions, 20 deliveries
    }

    @Test func droppedOldestLeavesTheDiskToo() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 2))
            let c = broker.connect("s", persistent: true)
            _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
            broker.detach(c.session)
            let pub = broker.connect("pub")
            for i in 1...5 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i))) }
            broker.close()
        }
        let counts = try storedCounts(directory)
        #expect(counts.messages == 2)
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 2))
        defer { broker.close() }
        let c = broker.connect("s", persistent: true, present: true)
        #expect(c.sink.takePublishes().map(text) == ["4", "5"])
    }

    @Test func aSessionThatStopsBeingPersistentLeavesTheDisk() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        let c = broker.connect("s", persistent: true)
        _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(c.session)
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(publish("t", "m", qos: .atLeastOnce, id: 1))
        let again = broker.connect("s", persistent: false, present: true)
        #expect(again.sink.takePublishes().map(text) == ["m"])
        // And back: everything it holds is written again.
        let third = broker.connect("s", persistent: true, present: true)
        #expect(third.sink.takePublishes().map(\.duplicate) == [true])
        broker.close()
        let reopened = try Broker(directory: directory)
        defer { reopened.close() }
        #expect(reopened.info(name("s"))?.subscriptions == ["t"])
        #expect(reopened.info(name("s"))?.inflight == 1)
    }

    @Test func storageFailureIsAnErrorWithAReasonCode() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        let c = broker.connect("s", persistent: true)
        broker.close()
        await #expect(throws: BrokerError.self) {
            _ = try await c.session.handle(subscribe([("t", .atLeastOnce)]))
        }
    }

    /// Many publishers at once: their writes share commits, and every PUBACK means stored.
    @Test func concurrentPublishesShareCommits() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 100_000, queueMaxBytes: 1 << 40))
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t/#", .atLeastOnce)]))
        broker.detach(sub.session)
        let publishers = 50, each = 40
        let clock = ContinuousClock()
        let started = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for p in 0..<publishers {
                group.addTask {
                    let c = broker.connect("pub\(p)")
                    for i in 1...each {
                        let answers = try await c.session.handle(publish("t/\(p)", "\(i)", qos: .atLeastOnce, id: UInt16(i)))
                        #expect(answers == [.puback(ack(UInt16(i)))])
                    }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = clock.now - started
        print("broker: \(publishers * each) QoS 1 publishes to a persistent session in \(elapsed)")
        broker.close()
        let counts = try storedCounts(directory)
        #expect(counts.messages == publishers * each)
        let reopened = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 100_000, queueMaxBytes: 1 << 40))
        defer { reopened.close() }
        #expect(reopened.info(name("sub"))?.queued == publishers * each)
        // Per publisher, the order is kept.
        let back = reopened.connect("sub", persistent: true, present: true)
        var last: [String: Int] = [:]
        for p in back.sink.takePublishes() {
            let n = Int(text(p))!
            #expect(n == (last[p.topicName] ?? 0) + 1)
            last[p.topicName] = n
        }
        #expect(last.count == publishers)
    }
}

@Suite("Storage failures")
struct StorageFailureTests {
    /// A full store refuses the PUBLISH (0x97, no PUBACK); everything acknowledged before is
    /// still there, and the broker keeps serving once there is room.
    @Test func aFullStoreRefusesWithoutLosingWhatWasAcknowledged() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        var acknowledged: [String] = []
        do {
            let broker = try Broker(
                directory: directory, limits: BrokerLimits(queueMaxMessages: 100_000, queueMaxBytes: 1 << 40), storeOptions: BrokerStoreOptions(mapSize: 1 << 20))
            let sub = broker.connect("sub", persistent: true)
            _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
            broker.detach(sub.session)
            let pub = broker.connect("pub")
            let big = String(repeating: "x", count: 20_000)
            var refusal: BrokerError?
            for i in 1...200 {
                do {
                    let answers = try await pub.session.handle(publish("t", "\(i) \(big)", qos: .atLeastOnce, id: UInt16(i)))
                    #expect(answers == [.puback(ack(UInt16(i)))])
                    acknowledged.append("\(i)")
                } catch {
                    refusal = error
                    break
                }
            }
            let error = try #require(refusal, "a 1 MiB map cannot hold 4 MB")
            #expect(error.reasonCode == .quotaExceeded)
            #expect(!acknowledged.isEmpty)
            broker.close()
        }
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 100_000, queueMaxBytes: 1 << 40))
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true, present: true)
        let stored = sub.sink.takePublishes().map { String(text($0).prefix { $0 != " " }) }
        #expect(Set(acknowledged).isSubset(of: Set(stored)))
    }
}
