@testable import ClusterMessaging
import CustodyTesting
import Foundation
import MQTTCodec
import NATSClient
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

/// What `ReliableBatcher` handed to its store: (subject, payload, number) and the promise it answers.
final class RecordedStores: Sendable {
    let calls = Mutex<[(subject: String, payload: ByteBuffer, number: UInt64, promise: EventLoopPromise<Void>)]>([])
}

func publish(_ topic: String, _ payload: String, qos: MQTTQoS = .atLeastOnce) -> MQTTPublish {
    MQTTPublish(topicName: topic, payload: ByteBuffer(string: payload), qos: qos, packetIdentifier: qos == .atMostOnce ? nil : 7)
}

/// "topic payload" of each PUBLISH.
func texts(_ publishes: [MQTTPublish]?) -> [String] {
    (publishes ?? []).map { "\($0.topicName) \(String(buffer: $0.payload))" }
}

@Suite("Several MQTT messages per JetStream message")
struct BatchingTests {
    @Test func codecReadsBatchesAndSingleMessages() throws {
        var batch = ByteBuffer()
        for text in ["one", "two", "three"] { try ClusterMessageCodec.encode(publish("b/x", text), into: &batch) }
        #expect(texts(ClusterMessageCodec.decodeBatch(batch)) == ["b/x one", "b/x two", "b/x three"])
        // A version 1 payload (one PUBLISH, as nodes wrote before batching) is a batch of one.
        let single = try ClusterMessageCodec.encode(publish("b/y", "alone"))
        #expect(texts(ClusterMessageCodec.decodeBatch(single)) == ["b/y alone"])
        #expect(ClusterMessageCodec.decode(single)?.topicName == "b/y")
        // One PUBLISH is expected where one is kept (a will): a batch is not taken as one.
        #expect(ClusterMessageCodec.decode(batch) == nil)
        // A damaged batch gives nothing, not its first messages.
        #expect(ClusterMessageCodec.decodeBatch(batch.getSlice(at: 0, length: batch.readableBytes - 2)!) == nil)
        #expect(ClusterMessageCodec.decodeBatch(ByteBuffer()) == nil)
        #expect(ClusterMessageCodec.decodeBatch(ByteBuffer(string: "not mqtt")) == nil)
    }

    /// The node's consumer reads a batch's topic, and whether any of it is retained, without
    /// decoding its packets (it skips topics nobody here subscribed to).
    @Test func outlineReadsTopicAndRetainWithoutDecoding() throws {
        var batch = ByteBuffer()
        for text in ["one", "two"] { try ClusterMessageCodec.encode(publish("b/x", text), into: &batch) }
        #expect(ClusterMessageCodec.outline(batch)?.topic == "b/x")
        #expect(ClusterMessageCodec.outline(batch)?.retained == false)
        var retained = publish("b/x", "kept")
        retained.retain = true
        try ClusterMessageCodec.encode(retained, into: &batch)
        #expect(ClusterMessageCodec.outline(batch)?.retained == true)
        let long = String(repeating: "level/", count: 40) + "end"
        #expect(ClusterMessageCodec.outline(try ClusterMessageCodec.encode(publish(long, String(repeating: "p", count: 300))))?.topic == long)
        #expect(ClusterMessageCodec.outline(batch.getSlice(at: 0, length: batch.readableBytes - 2)!) == nil)
        #expect(ClusterMessageCodec.outline(ByteBuffer(string: "not mqtt")) == nil)
    }

    /// Messages added while the loop is busy go out as one batch per subject, in order, when
    /// it runs; each message's future is its batch's answer.
    @Test func messagesOfOneTurnAreGroupedBySubject() throws {
        let loop = EmbeddedEventLoop()
        let stores = RecordedStores()
        let batcher = ReliableBatcher(loop: loop, maxMessages: 3, maxBytes: 1 << 20) { subject, payload, number in
            let promise = loop.makePromise(of: Void.self)
            stores.calls.withLock { $0.append((subject, payload, number, promise)) }
            return promise.futureResult
        }
        let results = Mutex<[String: Result<Void, any Error>]>([:])
        for (subject, text) in [("s.a", "a1"), ("s.b", "b1"), ("s.a", "a2"), ("s.a", "a3"), ("s.a", "a4"), ("s.b", "b2")] {
            let packet = try ClusterMessageCodec.encode(publish(subject, text))
            batcher.add(packet, subject: subject).whenComplete { result in results.withLock { $0[text] = result } }
        }
        #expect(stores.calls.withLock { $0.isEmpty }, "nothing is stored before the loop runs")
        loop.run()
        let calls = stores.calls.withLock { $0 }
        // s.a holds at most 3: a4 starts a second batch of s.a, after s.b's.
        #expect(calls.map(\.subject) == ["s.a", "s.b", "s.a"])
        #expect(calls.map(\.number) == [1, 2, 3])
        #expect(calls.map { texts(ClusterMessageCodec.decodeBatch($0.payload)) } == [
            ["s.a a1", "s.a a2", "s.a a3"], ["s.b b1", "s.b b2"], ["s.a a4"],
        ])
        #expect(results.withLock { $0.isEmpty }, "no answer before JetStream's")
        calls[0].promise.succeed(())
        calls[1].promise.fail(NATSError.closed)
        loop.run()
        let answered = results.withLock { $0 }
        for text in ["a1", "a2", "a3"] {
            guard case .success = answered[text] else { Issue.record("\(text): \(String(describing: answered[text]))"); continue }
        }
        for text in ["b1", "b2"] {
            guard case .failure = answered[text] else { Issue.record("\(text) should fail with its batch"); continue }
        }
        #expect(answered["a4"] == nil, "a4's batch is not answered yet")
        calls[2].promise.succeed(())
        loop.run()
        #expect(results.withLock { $0.count } == 6)
        // Later messages start new batches with the next numbers.
        _ = batcher.add(try ClusterMessageCodec.encode(publish("s.a", "a5")), subject: "s.a")
        loop.run()
        #expect(stores.calls.withLock { $0.last?.number } == 4)
        try loop.syncShutdownGracefully()
    }

    /// With a linger, the first message waits that long for others before its batch goes.
    @Test func lingerWaitsForMoreMessages() throws {
        let loop = EmbeddedEventLoop()
        let stores = RecordedStores()
        let batcher = ReliableBatcher(loop: loop, maxMessages: 256, maxBytes: 1 << 20, linger: .microseconds(200)) { subject, payload, number in
            let promise = loop.makePromise(of: Void.self)
            promise.succeed(())
            stores.calls.withLock { $0.append((subject, payload, number, promise)) }
            return promise.futureResult
        }
        _ = batcher.add(try ClusterMessageCodec.encode(publish("s.a", "a1")), subject: "s.a")
        loop.run()
        loop.advanceTime(by: .microseconds(150))
        #expect(stores.calls.withLock { $0.isEmpty }, "still lingering")
        _ = batcher.add(try ClusterMessageCodec.encode(publish("s.a", "a2")), subject: "s.a")
        loop.advanceTime(by: .microseconds(50))
        #expect(stores.calls.withLock { $0.map { texts(ClusterMessageCodec.decodeBatch($0.payload)) } } == [["s.a a1", "s.a a2"]])
        try loop.syncShutdownGracefully()
    }

    @Test func byteLimitAndSingleMessageMode() throws {
        let loop = EmbeddedEventLoop()
        let stores = RecordedStores()
        let store: ReliableBatcher.Store = { subject, payload, number in
            let promise = loop.makePromise(of: Void.self)
            promise.succeed(())
            stores.calls.withLock { $0.append((subject, payload, number, promise)) }
            return promise.futureResult
        }
        let packet = try ClusterMessageCodec.encode(publish("s.a", String(repeating: "x", count: 100)))
        let bytes = ReliableBatcher(loop: loop, maxMessages: 256, maxBytes: packet.readableBytes * 2, store: store)
        for _ in 0..<5 { _ = bytes.add(packet, subject: "s.a") }
        loop.run()
        #expect(stores.calls.withLock { $0.map { ClusterMessageCodec.decodeBatch($0.payload)?.count ?? 0 } } == [2, 2, 1])
        stores.calls.withLock { $0 = [] }
        // Batches of one: each message alone (codec version 1).
        let single = ReliableBatcher(loop: loop, maxMessages: 1, maxBytes: 1 << 20, store: store)
        for _ in 0..<3 { _ = single.add(packet, subject: "s.a") }
        loop.run()
        #expect(stores.calls.withLock { $0.map { ClusterMessageCodec.decode($0.payload) != nil } } == [true, true, true])
        try loop.syncShutdownGracefully()
    }
}

extension MessagingSuites {
    @Suite("Batches on the message stream across nodes")
    struct BatchedStreamTests {
        /// 1,000 QoS 1 messages from one paho client on node 1 (up to 100 in flight, the Receive Maximum): every one
        /// PUBACKed, and received in order on nodes 2 and 3; the stream holds fewer JetStream
        /// messages than that (some carry several MQTT messages; without the batching it holds
        /// exactly 1,000).
        @Test func aStreamOfPublishesIsStoredInFewerJetStreamMessages() async throws {
            let cluster = try await offPool { try MessagingCluster("batched-stream") }
            defer { cluster.cleanUp() }
            try await offPool {
                let subscribers = try [1, 2].map { try PahoClient.subscriber(port: cluster[$0].port, id: "sub-\($0)", filters: ["k/#"]) }
                let publisher = try PahoClient(port: cluster[0].port, id: "pub", [
                    "--pub", "k/x", "--count", "1000", "--qos", "1", "--prefix", "m", "--inflight", "100",
                ])
                try publisher.spawned.waitForOutput(containing: "DONE", timeout: 120)
                #expect(Set(publisher.acknowledged).count == 1_000)
                let expected = (0..<1_000).map { "m-\($0)" }
                for subscriber in subscribers {
                    try subscriber.wait(timeout: 60) { firstOccurrences($0.payloads).count >= 1_000 }
                    #expect(firstOccurrences(subscriber.payloads) == expected)
                }
            }
            let connection = try await NATSConnection.connect(NATSOptions(servers: [NATSServer(url: cluster.nats.url)!]))
            let stored = try await JetStream(connection).streamInfo("CUSTODY_MESSAGES")?.state.messages
            await connection.close()
            #expect(stored != nil && stored! < 1_000, "JetStream messages for 1,000 MQTT messages: \(String(describing: stored))")
        }

        /// Written into the stream as other nodes write them: a batch of three (codec version 2)
        /// and one message alone (version 1, as nodes before the batching wrote). A subscriber
        /// on node 2 gets all four, in order (the node's consumer decodes both), and so does a
        /// persistent session that was offline on node 1 and resumes on node 3 (its queue read
        /// from the stream by filter subject).
        @Test func batchesAndSingleMessagesReachNodesAndAMovedSession() async throws {
            let cluster = try await offPool { try MessagingCluster("batch-read") }
            defer { cluster.cleanUp() }
            let live = try await offPool { () -> PahoClient in
                let mover = try PahoClient(port: cluster[0].port, id: "batch-mover", ["--qos", "1", "--clean", "0", "--expiry", "3600", "--sub", "b/#"])
                try mover.spawned.waitForOutput(containing: "SUBACK", timeout: 30)
                mover.stop()
                Thread.sleep(forTimeInterval: 1)
                return try PahoClient.subscriber(port: cluster[1].port, id: "live", filters: ["b/#"])
            }
            let connection = try await NATSConnection.connect(NATSOptions(servers: [NATSServer(url: cluster.nats.url)!]))
            let jetStream = JetStream(connection)
            let headers = NATSHeaders([(NATSClusterLink.nodeHeader, "elsewhere")])
            var batch = ByteBuffer()
            for text in ["v2-1", "v2-2", "v2-3"] { try ClusterMessageCodec.encode(publish("b/x", text), into: &batch) }
            _ = try await jetStream.publish(NATSClusterLink.reliableMapping.subject(topic: "b/x"), payload: batch, headers: headers, messageID: "elsewhere-1")
            _ = try await jetStream.publish(
                NATSClusterLink.reliableMapping.subject(topic: "b/x"), payload: try ClusterMessageCodec.encode(publish("b/x", "v1-4")),
                headers: headers, messageID: "elsewhere-2")
            await connection.close()
            let expected = ["v2-1", "v2-2", "v2-3", "v1-4"]
            try await offPool {
                try live.wait(timeout: 30) { $0.payloads.count >= 4 }
                #expect(live.payloads == expected)
                let moved = try PahoClient(port: cluster[2].port, id: "batch-mover", ["--qos", "1", "--clean", "0", "--expiry", "3600"])
                try moved.spawned.waitForOutput(containing: "CONNACK rc=0 present=1", timeout: 30)
                try moved.wait(timeout: 30) { firstOccurrences($0.payloads).count >= 4 }
                #expect(firstOccurrences(moved.payloads) == expected, "\(cluster.outputs)")
                moved.stop()
                live.stop()
            }
        }
    }
}
