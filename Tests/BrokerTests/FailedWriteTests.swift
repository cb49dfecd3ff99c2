import LedgerCore
import LMDBStorage
import MQTTCodec
import Testing

@testable import Broker

extension Broker {
    /// What memory holds, for comparing with what a reopened store gives back.
    func queuedTexts(_ session: String) -> [String] {
        locked { sessions[name(session)].map { state in state.queue.map { text($0.message.publish) } } ?? [] }
    }

    /// In flight, then queued: everything the session still owes its client, in order.
    func heldTexts(_ session: String) -> [String] {
        locked {
            guard let state = sessions[name(session)] else { return [] }
            let deliveries = state.inflight.values.sorted { $0.sequence < $1.sequence } + Array(state.queue)
            return deliveries.map { text($0.message.publish) }
        }
    }

    func retainedText(_ topic: String) -> String? {
        locked { retained[topic].map { text($0.publish) } }
    }
}

/// A store write that fails is not applied in memory either: what a refused SUBSCRIBE,
/// UNSUBSCRIBE or PUBLISH changed ahead of its commit (subscriptions, retained messages, a
/// queue and the oldest messages dropped to make room) is as it was, and the store, reopened,
/// gives back exactly what memory held.
@Suite("Storage failures: memory as it was")
struct FailedWriteTests {
    let limits = BrokerLimits(maxRetainedBytes: 1 << 20, maxRetainedMessages: 1 << 20, queueMaxMessages: 3)
    let full = LedgerError.storage(operation: "mdb_txn_commit", code: LedgerError.mapFullCode, message: "full")

    /// Each kind of change, its commit failed on purpose (`BrokerStore.failNextCommits`).
    @Test func eachChangeIsPutBackWhenItsCommitFails() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        var memory: (queue: [String], subscriptions: [String], retained: [String?])
        do {
            let broker = try Broker(directory: directory, limits: limits)
            let store = try #require(broker.store)
            let queued = broker.connect("queued", persistent: true)
            _ = try await queued.session.handle(subscribe([("q", .atLeastOnce)]))
            broker.detach(queued.session)
            let subs = broker.connect("subs", persistent: true)
            _ = try await subs.session.handle(subscribe([("a", .atLeastOnce), ("b", .atMostOnce)]))
            let pub = broker.connect("pub")
            for n in 1...3 { _ = try await pub.session.handle(publish("q", "\(n)", qos: .atLeastOnce, id: UInt16(n))) }
            _ = try await pub.session.handle(publish("r", "r0", qos: .atLeastOnce, id: 4, retain: true))
            _ = try await pub.session.handle(publish("d", "d0", qos: .atLeastOnce, id: 5, retain: true))

            // A PUBLISH to the full queue, retained as well: the oldest stays, the newcomer stays out.
            store.failNextCommits(with: full)
            let refusal = await #expect(throws: BrokerError.self) {
                try await pub.session.handle(publish("q", "4", qos: .atLeastOnce, id: 6, retain: true))
            }
            #expect(refusal?.reasonCode == .quotaExceeded, "a full store is a quota exceeded")
            #expect(broker.queuedTexts("queued") == ["1", "2", "3"])
            #expect(broker.info(name("queued"))?.dropped == 0)
            #expect(broker.retainedText("q") == nil)
            // The publisher, told nothing, sends it again: now it goes in, once.
            #expect(try await pub.session.handle(publish("q", "4", qos: .atLeastOnce, id: 6, retain: true)) == [.puback(ack(6))])
            #expect(broker.queuedTexts("queued") == ["2", "3", "4"])
            #expect(broker.retainedText("q") == "4")

            // A retained message replaced, another deleted.
            store.failNextCommits(2, with: full)
            await #expect(throws: BrokerError.self) {
                try await pub.session.handle(publish("r", "r1", qos: .atLeastOnce, id: 7, retain: true))
            }
            await #expect(throws: BrokerError.self) {
                try await pub.session.handle(publish("d", "", qos: .atLeastOnce, id: 8, retain: true))
            }
            #expect(broker.retainedText("r") == "r0")
            #expect(broker.retainedText("d") == "d0")

            // A SUBSCRIBE that replaces a filter (QoS 1 -> 2), adds one, and adds one with a retained message.
            store.failNextCommits(with: full)
            await #expect(throws: BrokerError.self) {
                try await subs.session.handle(subscribe([("a", .exactlyOnce), ("c", .atLeastOnce), ("r", .atLeastOnce)], id: 2))
            }
            #expect(broker.info(name("subs"))?.subscriptions == ["a", "b"])
            #expect(broker.info(name("subs"))?.inflight == 0, "the retained message it would have got is not in flight")
            #expect(subs.sink.takePublishes().isEmpty)
            _ = try await pub.session.handle(publish("a", "to a", qos: .exactlyOnce, id: 9))
            _ = try await pub.session.handle(.pubrel(ack(9)))
            #expect(subs.sink.takePublishes().map(\.qos) == [.atLeastOnce], "the replaced subscription's QoS is back")

            // An UNSUBSCRIBE.
            store.failNextCommits(with: full)
            await #expect(throws: BrokerError.self) {
                try await subs.session.handle(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 3, topicFilters: ["a", "b"])))
            }
            #expect(broker.info(name("subs"))?.subscriptions == ["a", "b"])
            broker.detach(subs.session)

            memory = (
                broker.queuedTexts("queued"), broker.info(name("subs"))?.subscriptions ?? [],
                ["q", "r", "d"].map { broker.retainedText($0) })
            broker.close()
        }
        let broker = try Broker(directory: directory, limits: limits)
        defer { broker.close() }
        #expect(broker.queuedTexts("queued") == memory.queue)
        #expect(broker.info(name("subs"))?.subscriptions == memory.subscriptions)
        #expect(["q", "r", "d"].map { broker.retainedText($0) } == memory.retained)
        #expect(memory.retained == ["4", "r0", "d0"])
    }

    /// The store made to fail for real: a 512 KiB map filled with retained messages until LMDB
    /// answers MDB_MAP_FULL. Which write still finds a free page is LMDB's business (a small one
    /// often does: each commit frees the pages it copied), so each step tries until one fails,
    /// and those that succeed are kept in memory and on disk alike.
    @Test func aFullMapLeavesMemoryAsTheStoreHasIt() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let large = String(repeating: "x", count: 16_000)
        var memory: (queue: [String], subscriptions: [String], retained: String?)
        do {
            let broker = try Broker(directory: directory, limits: limits, storeOptions: BrokerStoreOptions(mapSize: 512 << 10))
            let queued = broker.connect("queued", persistent: true)
            _ = try await queued.session.handle(subscribe([("q", .atLeastOnce)]))
            broker.detach(queued.session)
            let pub = broker.connect("pub")
            var id: UInt16 = 0
            func nextID() -> UInt16 { id = id == 60_000 ? 1 : id + 1; return id }
            for n in 1...3 { _ = try await pub.session.handle(publish("q", "\(n) \(large)", qos: .atLeastOnce, id: nextID())) }
            _ = try await pub.session.handle(publish("r", "r0", qos: .atLeastOnce, id: nextID(), retain: true))
            for size in [16_000, 1_600, 160] {
                var failures = 0
                var n = 0
                while failures < 3 {
                    n += 1
                    do {
                        _ = try await pub.session.handle(publish(
                            "fill/\(size)/\(n)", String(repeating: "x", count: size), qos: .atLeastOnce, id: nextID(),
                            retain: true))
                    } catch {
                        #expect(error.reasonCode == .quotaExceeded, "MDB_MAP_FULL: \(error)")
                        #expect(broker.retainedText("fill/\(size)/\(n)") == nil)
                        failures += 1
                    }
                }
            }

            // A large message to the full queue (it would drop the oldest).
            var refused = false
            for n in 4...100 where !refused {
                let before = broker.queuedTexts("queued")
                do {
                    _ = try await pub.session.handle(publish("q", "\(n) \(large)", qos: .atLeastOnce, id: nextID()))
                } catch {
                    refused = true
                    #expect(broker.queuedTexts("queued") == before)
                }
            }
            #expect(refused, "the store never refused a queued message")

            // A retained message replaced by a large one.
            refused = false
            for n in 1...100 where !refused {
                let before = broker.retainedText("r")
                do {
                    _ = try await pub.session.handle(publish("r", "r\(n) \(large)", qos: .atLeastOnce, id: nextID(), retain: true))
                } catch {
                    refused = true
                    #expect(broker.retainedText("r") == before)
                }
            }
            #expect(refused, "the store never refused a retained message")

            // A long filter (stored in the record's value) for the persistent session.
            refused = false
            let subscriber = broker.connect("queued", persistent: true, present: true)
            for n in 1...100 where !refused {
                do {
                    _ = try await subscriber.session.handle(subscribe([("new/\(n)/\(large)", .atLeastOnce)], id: UInt16(n)))
                } catch {
                    refused = true
                    #expect(broker.info(name("queued"))?.subscriptions.contains("new/\(n)/\(large)") == false)
                }
            }
            #expect(refused, "the store never refused a subscription")
            broker.detach(subscriber.session)

            memory = (broker.heldTexts("queued"), broker.info(name("queued"))?.subscriptions ?? [], broker.retainedText("r"))
            broker.close()
        }
        // Reopened with room: the store holds what memory held, no more and no less.
        let broker = try Broker(directory: directory, limits: limits)
        defer { broker.close() }
        #expect(broker.heldTexts("queued") == memory.queue)
        #expect(broker.info(name("queued"))?.subscriptions == memory.subscriptions)
        #expect(broker.retainedText("r") == memory.retained)
        #expect(memory.queue.count == 3, "the queue's limit")
    }
}
