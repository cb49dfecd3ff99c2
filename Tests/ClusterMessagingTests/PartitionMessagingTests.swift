import CustodyTesting
import Foundation
import Testing

extension MessagingSuites {
    /// Part 1's partition test with messages: three sides, each a network namespace with one
    /// etcd member and one custody node carrying messages on NATS (`--cluster-nats`); the NATS
    /// server stands on side 1, so that the side that is cut off (side 3) loses etcd's quorum
    /// and NATS together, as a machine cut off from the rest would. Skipped where network
    /// namespaces cannot be made (`ip netns add` needs root or CAP_NET_ADMIN).
    @Suite("A network partition with messages")
    struct PartitionMessagingTests {
        /// A QoS 1 stream published on side 1 to a subscriber on side 2 while side 3 is cut off:
        /// the minority's client is told to use another server (DISCONNECT 0x9C) and its CONNECTs
        /// are refused (0x88); every message PUBACKed on the majority side reaches the
        /// majority's subscriber.
        @Test(.enabled(
            if: NetworkNamespaces.available,
            "network namespaces cannot be made here (ip netns add needs root or CAP_NET_ADMIN): the partition test with messages is skipped"))
        func theMinorityIsRefusedAndTheMajorityLosesNoAcknowledgedMessage() async throws {
            try await offPool {
                let net = try NetworkNamespaces(sides: 3)
                defer { net.remove() }
                let etcd = try RunningEtcd("partition-messages", placed: (0..<3).map { (net.address($0), net.launcher($0)) })
                defer { etcd.cleanUp() }
                let nats = try RunningNATS("partition-messages", host: net.address(0), launcher: net.launcher(0))
                defer { nats.cleanUp() }
                // As in part 1's partition test: long enough for the majority to elect an etcd
                // leader again and confirm its keepalives on a busy machine.
                let lease = 8
                let nodes = try net.custodyNodes("partition-messages", etcd: etcd, leaseSeconds: lease, extra: ["--cluster-nats", nats.url])
                defer { for node in nodes { node.cleanUp() } }
                do {
                    let subscriber = try PahoClient.subscriber(
                        port: nodes[1].port, id: "major-sub", filters: ["p/#"], launcher: net.launcher(1))
                    defer { subscriber.stop() }
                    let minority = try PahoClient.subscriber(
                        port: nodes[2].port, id: "minor-sub", filters: ["p/#"], launcher: net.launcher(2))
                    defer { minority.stop() }
                    let publisher = try PahoClient.publisher(
                        port: nodes[0].port, id: "major-pub", topic: "p/stream", count: 8_000, qos: 1, prefix: "p",
                        launcher: net.launcher(0))
                    defer { publisher.stop() }
                    try publisher.wait(timeout: 60) { $0.acknowledged.count >= 300 }
                    try net.cut(2)
                    // The minority stops serving within the lease: its client hears 0x9C.
                    let atCut = publisher.acknowledged.count
                    try minority.wait(timeout: Double(lease) + 4) { $0.lines.contains("DISCONNECT rc=156") }
                    print("partition with messages: \(atCut) PUBACKed when side 3 was cut, \(publisher.acknowledged.count) when its client was disconnected")
                    try publisher.spawned.waitForOutput(containing: "DONE", timeout: 180)
                    let acknowledged = Set(publisher.acknowledged)
                    #expect(acknowledged.count == 8_000)
                    // And refuses CONNECTs (no etcd quorum there: nothing granted).
                    let refused = try PahoClient(port: nodes[2].port, id: "minor-new", ["--qos", "1"], launcher: net.launcher(2))
                    try refused.wait(timeout: 20) { $0.lines.contains { $0.hasPrefix("CONNACK") } }
                    #expect(refused.lines.first { $0.hasPrefix("CONNACK") } == "CONNACK rc=136 present=0")
                    refused.stop()
                    // No message PUBACKed on the majority side is lost.
                    try subscriber.wait(timeout: 60) { acknowledged.isSubset(of: Set($0.payloads)) }
                    let received = subscriber.payloads
                    print("partition with messages: acknowledged \(acknowledged.count), received on the majority \(received.count), lost \(acknowledged.subtracting(received).count), duplicates \(received.count - Set(received).count); the minority's subscriber got \(minority.payloads.count) before it was cut off")
                    #expect(firstOccurrences(received) == (0..<8_000).map { "p-\($0)" })
                } catch {
                    for node in nodes { Issue.record("\(node.stdout)\n\(node.stderr)") }
                    throw error
                }
            }
        }
    }
}
