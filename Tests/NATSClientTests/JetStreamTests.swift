import CustodyTesting
import Foundation
import NIOCore
import Testing

@testable import NATSClient

@Suite("JetStream API against a real nats-server")
struct JetStreamTests {
    @Test func streamPublishAcksDuplicatesAndDurablePullConsumer() async throws {
        let nats = try await offPool { try RunningNATS("js-basic") }
        defer { nats.cleanUp() }
        let connection = try await connect([nats.url])
        let js = JetStream(connection)
        #expect(try await js.streamInfo("T") == nil)
        var config = StreamConfig(name: "T", subjects: ["t.>"])
        config.duplicateWindow = 60_000_000_000
        let made = try await js.ensureStream(config)
        #expect(made.config.storage == "file")
        #expect(try await js.ensureStream(config).state.messages == 0)

        for index in 1...20 {
            let ack = try await js.publish("t.\(index % 3)", payload: ByteBuffer(string: "m\(index)"), messageID: "id-\(index)")
            #expect(ack.stream == "T" && ack.sequence == UInt64(index) && ack.duplicate != true)
        }
        let repeated = try await js.publish("t.1", payload: ByteBuffer(string: "m1"), messageID: "id-1")
        #expect(repeated.duplicate == true && repeated.sequence == 1)
        // Outside the stream's subjects: nobody answers.
        await #expect(throws: NATSError.self) { try await js.publish("u.1", payload: ByteBuffer()) }

        var consumer = ConsumerConfig(durableName: "node-a")
        consumer.ackPolicy = "all"
        consumer.filterSubject = "t.>"
        _ = try await js.createConsumer(stream: "T", consumer)
        let pull = try PullConsumer(js, stream: "T", consumer: "node-a", batch: 7, expires: .seconds(2))
        var got: [String] = []
        var last: NATSMessage?
        while got.count < 20 {
            let messages = await pull.nextBatch()
            got += messages.map { String(buffer: $0.payload) }
            last = messages.last
        }
        #expect(got == (1...20).map { "m\($0)" })
        let meta = try #require(JetStreamMetadata(replyTo: last?.replyTo))
        #expect(meta.stream == "T" && meta.consumer == "node-a" && meta.streamSequence == 20 && meta.delivered == 1)
        // One ack of the last acknowledges all twenty (ack policy "all").
        try pull.ack(try #require(last))
        try await connection.flush()
        var info = try #require(try await js.consumerInfo(stream: "T", name: "node-a"))
        for _ in 0..<50 where info.numAckPending != 0 {
            try await Task.sleep(nanoseconds: 20_000_000)
            info = try #require(try await js.consumerInfo(stream: "T", name: "node-a"))
        }
        #expect(info.numAckPending == 0 && info.numPending == 0)
        // Published after: delivered through the pull that is still outstanding.
        _ = try await js.publish("t.late", payload: ByteBuffer(string: "late"))
        let late = await pull.nextBatch()
        #expect(late.map { String(buffer: $0.payload) } == ["late"])
        pull.stop()

        #expect(try await js.deleteConsumer(stream: "T", name: "node-a"))
        #expect(try await !js.deleteConsumer(stream: "T", name: "node-a"))
        try await js.deleteStream("T")
        #expect(try await js.streamInfo("T") == nil)
        await connection.close()
    }

    /// A taker that does not take: the pull consumer holds about two pulls' worth (one taken
    /// as the first filled, one waiting), not everything the stream has; taking them lets the
    /// next pull go, and all 60 come in order.
    @Test func aPullConsumerPullsAgainOnlyAsItsMessagesAreTaken() async throws {
        let nats = try await offPool { try RunningNATS("js-paced") }
        defer { nats.cleanUp() }
        let connection = try await connect([nats.url])
        let js = JetStream(connection)
        _ = try await js.ensureStream(StreamConfig(name: "P", subjects: ["p.>"]))
        for index in 1...60 { _ = try await js.publish("p.x", payload: ByteBuffer(string: "m\(index)")) }
        var consumer = ConsumerConfig(durableName: "paced")
        consumer.ackPolicy = "all"
        _ = try await js.createConsumer(stream: "P", consumer)
        let pull = try PullConsumer(js, stream: "P", consumer: "paced", batch: 10, expires: .seconds(2))
        defer { pull.stop() }
        try await Task.sleep(nanoseconds: 500_000_000)
        let delivered = try #require(try await js.consumerInfo(stream: "P", name: "paced")?.numAckPending)
        #expect(delivered <= 20, "delivered before anything was taken: \(delivered)")
        var got: [String] = []
        while got.count < 60 { got += await pull.nextBatch().map { String(buffer: $0.payload) } }
        #expect(got == (1...60).map { "m\($0)" })
        await connection.close()
    }

    /// What is not acknowledged is delivered again to the durable consumer's next client.
    @Test func unacknowledgedMessagesComeAgainAfterAckWait() async throws {
        let nats = try await offPool { try RunningNATS("js-redeliver") }
        defer { nats.cleanUp() }
        let connection = try await connect([nats.url])
        let js = JetStream(connection)
        _ = try await js.ensureStream(StreamConfig(name: "R", subjects: ["r.>"]))
        for index in 1...3 { _ = try await js.publish("r.x", payload: ByteBuffer(string: "\(index)")) }
        var consumer = ConsumerConfig(durableName: "d")
        consumer.ackPolicy = "all"
        consumer.ackWait = 1_000_000_000
        _ = try await js.createConsumer(stream: "R", consumer)
        let first = try PullConsumer(js, stream: "R", consumer: "d", batch: 10, expires: .seconds(1))
        var taken: [NATSMessage] = []
        while taken.count < 3 { taken += await first.nextBatch() }
        // Only the first is acknowledged; the other two are not.
        try first.ack(taken[0])
        try await connection.flush()
        first.stop()
        await connection.close()

        let again = try await connect([nats.url])
        let second = try PullConsumer(JetStream(again), stream: "R", consumer: "d", batch: 10, expires: .seconds(1))
        var rest: [(String, UInt64)] = []
        while rest.count < 2 {
            rest += await second.nextBatch().map { ($0.payload.getString(at: $0.payload.readerIndex, length: $0.payload.readableBytes) ?? "", JetStreamMetadata(replyTo: $0.replyTo)?.delivered ?? 0) }
        }
        #expect(rest.map(\.0) == ["2", "3"])
        #expect(rest[0].1 == 2)
        second.stop()
        await again.close()
    }

    /// In a 3-server cluster, a stream with 3 replicas keeps taking publishes while one server
    /// is down, and the client keeps its publishes acknowledged.
    @Test func replicatedStreamSurvivesAServerStopped() async throws {
        let nats = try await offPool { try RunningNATS("js-cluster", servers: 3) }
        defer { nats.cleanUp() }
        let connection = try await connect(nats.urls)
        let js = JetStream(connection)
        var config = StreamConfig(name: "C", subjects: ["c.>"])
        config.numReplicas = 3
        var made: StreamInfo?
        for _ in 0..<100 where made == nil {
            made = try? await js.ensureStream(config)
            if made == nil { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        #expect(made?.config.numReplicas == 3)
        var acked = 0
        for index in 0..<200 {
            if index == 60 { nats.stop(server: 0) }
            _ = try await js.publish("c.m", payload: ByteBuffer(string: "\(index)"), messageID: "c-\(index)")
            acked += 1
        }
        #expect(acked == 200)
        let info = try #require(try await js.streamInfo("C"))
        #expect(info.state.messages == 200)
        await connection.close()
    }
}
