@testable import ClusterMessaging
import CustodyTesting
import Foundation
import MQTTCodec
import NATSClient
import NIOCore
import Testing

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
            let connection = try await NATSConnection.connect(NATSOptions(servers: [NATSServer(url: cluster.nats.url)!]))
            let jetStream = JetStream(connection)
            let headers = NATSHeaders([(NATSClusterLink.nodeHeader, "elsewhere")])
            for batchNumber in 0..<20 {
                var batch = ByteBuffer()
                for index in 0..<100 {
                    try ClusterMessageCodec.encode(publish("f/x", "f-\(batchNumber * 100 + index)"), into: &batch)
                }
                _ = try await jetStream.publish(
                    NATSClusterLink.reliableMapping.subject(topic: "f/x"), payload: batch, headers: headers,
                    messageID: "elsewhere-flow-\(batchNumber)")
            }
            await connection.close()
            let expected = (0..<2_000).map { "f-\($0)" }
            try await offPool {
                try? subscriber.wait(timeout: 60) { firstOccurrences($0.payloads).count >= 2_000 }
                let received = firstOccurrences(subscriber.payloads)
                #expect(received.count == 2_000, "received \(received.count) of 2,000")
                #expect(received == expected.filter(Set(received).contains), "in order")
                subscriber.stop()
            }
            #expect(!cluster.outputs.contains("queueMaxMessages"), "\(cluster.outputs.suffix(2000))")
        }
    }
}
