@testable import ClusterMessaging
import CustodyTesting
import Foundation
import MQTTCodec
import NATSClient
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension MessagingSuites {
    @Suite("The node's consumer hands the broker what the queues can take")
    struct FlowControlTests {
        /// 2,000 QoS 1 messages already in the stream (as another node stores them: batches of
        /// 100) when the node's consumer takes them, for a subscriber with an in-flight window
        /// of 10 and a queue of at most 20: the consumer hands them over as the queue has room,
        /// and the subscriber gets every one, in order. Handed over as they came (two or more
        /// batches at once), the queue dropped all but its newest 20 of each burst.
        @Test func aBacklogLargerThanAQueueIsNotDropped() async throws {
            let cluster = try await offPool {
                try MessagingCluster("flow", nodes: 1, extra: ["--queue-max-messages", "20", "--max-outbound-inflight", "10"])
            }
            defer { cluster.cleanUp() }
            let subscriber = try await offPool { try PahoClient.subscriber(port: cluster[0].port, id: "narrow", filters: ["f/#"]) }
            try await writeBacklog(cluster, topic: "f/x", batches: 20, of: 100)
            let expected = (0..<2_000).map { "f-\($0)" }
            try await offPool {
                try? subscriber.wait(timeout: 60) { firstOccurrences($0.payloads).count >= 2_000 }
                let received = firstOccurrences(subscriber.payloads)
                let inOrder = received == expected.filter(Set(received).contains)
                #expect(received.count == 2_000, "received \(received.count) of 2,000")
                #expect(inOrder)
                subscriber.stop()
            }
            #expect(!cluster.outputs.contains("queueMaxMessages"), "\(cluster.outputs.suffix(2000))")
        }

        /// A subscriber that stops taking messages (its process stopped) does not hold the
        /// node's other subscriber back: once its queue has not moved for 2 s it no longer
        /// counts, and the other gets all 2,000 messages, in order.
        @Test func aStalledSubscriberDoesNotHoldTheNodeBack() async throws {
            let cluster = try await offPool {
                try MessagingCluster("flow-stall", nodes: 1, extra: ["--queue-max-messages", "20", "--max-outbound-inflight", "10"])
            }
            defer { cluster.cleanUp() }
            let (stalled, live) = try await offPool {
                (try PahoClient.subscriber(port: cluster[0].port, id: "stalled", filters: ["f/#"]),
                 try PahoClient.subscriber(port: cluster[0].port, id: "live", filters: ["f/#"]))
            }
            kill(stalled.spawned.process.processIdentifier, SIGSTOP)
            defer {
                kill(stalled.spawned.process.processIdentifier, SIGCONT)
                stalled.stop()
            }
            try await writeBacklog(cluster, topic: "f/x", batches: 20, of: 100)
            let expected = (0..<2_000).map { "f-\($0)" }
            try await offPool {
                try? live.wait(timeout: 60) { firstOccurrences($0.payloads).count >= 2_000 }
                let received = firstOccurrences(live.payloads)
                let whole = received == expected
                #expect(whole, "received \(received.count) of 2,000, in order: \(received == expected.filter(Set(received).contains))")
                live.stop()
            }
        }
    }
}

/// `batches` JetStream messages of `size` QoS 1 messages each ("f-0", "f-1", …) on `topic`,
/// written into the stream as another node writes them.
func writeBacklog(_ cluster: MessagingCluster, topic: String, batches: Int, of size: Int) async throws {
    let connection = try await NATSConnection.connect(NATSOptions(servers: [NATSServer(url: cluster.nats.url)!]))
    let jetStream = JetStream(connection)
    let headers = NATSHeaders([(NATSClusterLink.nodeHeader, "elsewhere")])
    for batchNumber in 0..<batches {
        var batch = ByteBuffer()
        for index in 0..<size {
            try ClusterMessageCodec.encode(publish(topic, "f-\(batchNumber * size + index)"), into: &batch)
        }
        _ = try await jetStream.publish(
            NATSClusterLink.reliableMapping.subject(topic: topic), payload: batch, headers: headers,
            messageID: "elsewhere-\(topic)-\(batchNumber)")
    }
    await connection.close()
}
