import CustodyTesting
import Foundation
import LedgerCore
import Testing

extension ClusterSuites {
    /// Three sides, each a network namespace with one etcd member and one custody node (clients
    /// reach their node on the side's own 127.0.0.1); one side is cut off from the other two.
    /// Skipped where network namespaces cannot be made (`ip netns add` needs root or CAP_NET_ADMIN).
    @Suite("A network partition", .serialized)
    struct PartitionTests {
        @Test(.enabled(
            if: NetworkNamespaces.available,
            "network namespaces cannot be made here (ip netns add needs root or CAP_NET_ADMIN): the partition test is skipped"))
        func theMinoritySideStopsServingAndNoSessionHasTwoOwners() async throws {
            try await offPool {
                let net = try NetworkNamespaces(sides: 3)
                defer { net.remove() }
                let etcd = try RunningEtcd("partition", placed: (0..<3).map { (net.address($0), net.launcher($0)) })
                defer { etcd.cleanUp() }
                // Long enough for the majority's members to elect a leader again (the cut member
                // may have led) and confirm a keepalive within two thirds of it on a busy machine:
                // with 5 s, a full parallel test run once saw the majority node stop serving too.
                let lease = 8
                let nodes = try net.custodyNodes("partition", etcd: etcd, leaseSeconds: lease)
                defer { for node in nodes { node.cleanUp() } }
                func code(_ side: Int, _ session: String, _ user: String) throws -> Int {
                    try connackCode(port: nodes[side].port, session: session, user: user, launcher: net.launcher(side))
                }
                do {
                    // A session held on the side that will be cut off, and one on the majority side.
                    let minorityHeld = try HeldSession(port: nodes[2].port, session: "p-minor", user: "alice", launcher: net.launcher(2))
                    defer { minorityHeld.kill() }
                    try minorityHeld.wait(for: "CONNACK (0)")
                    let majorityHeld = try HeldSession(port: nodes[0].port, session: "p-major", user: "bob", launcher: net.launcher(0))
                    defer { majorityHeld.kill() }
                    try majorityHeld.wait(for: "CONNACK (0)")

                    try net.cut(2)
                    let cutAt = Date()
                    // The minority side stops serving within the lease (before etcd may let its
                    // lease go): its connection is told to use another server ...
                    try minorityHeld.wait(for: "Received DISCONNECT (156)", timeout: Double(lease) + 2)
                    // (Within the lease; a second more for this test's own view on a busy machine.)
                    #expect(Date().timeIntervalSince(cutAt) <= Double(lease) + 1)
                    // ... and it refuses CONNECTs (no quorum: nothing granted).
                    #expect(try code(2, "p-new-minor-1", "carol") == 0x88)
                    // The majority side keeps granting, and its connection is untouched.
                    for round in 0..<4 {
                        #expect(try code(round % 2, "p-new-major-\(round)", "dave\(round)") == 0)
                    }
                    #expect(try code(2, "p-new-minor-2", "carol") == 0x88)
                    #expect(!majorityHeld.output.contains("DISCONNECT ("))
                    // Once the minority node's lease has lapsed in etcd, its session is the owner's
                    // to resume on the majority side, and still refused to others.
                    let deadline = Date().addingTimeInterval(15)
                    var lost = false
                    while !lost, Date() < deadline {
                        lost = try (nodes[0].events() + nodes[1].events()).contains {
                            $0.kind == .disconnected(.connectionLost) && $0.sessionName.value == "p-minor"
                        }
                        usleep(50_000)
                    }
                    #expect(lost)
                    #expect(try code(1, "p-minor", "mallory") == 0x87)
                    #expect(try code(1, "p-minor", "alice") == 0)

                    // Healed: the minority node serves again.
                    try net.heal(2)
                    var back = -1
                    let healDeadline = Date().addingTimeInterval(20)
                    while back != 0, Date() < healDeadline {
                        back = try code(2, "p-after-heal", "erin")
                        if back != 0 { usleep(200_000) }
                    }
                    #expect(back == 0)
                } catch {
                    for node in nodes { Issue.record("\(node.stdout)\n\(node.stderr)") }
                    throw error
                }
                for node in nodes { node.stop() }
                // No session ever had two CONNACKed owners at once, across the three ledgers.
                let dirs = nodes.flatMap { ["--data-dir", $0.directory] }
                let (status, out, _) = try run(product: "custody-audit", ["verify", "--cluster"] + dirs, timeout: 120)
                #expect(status == 0, "\(out)")
                // Epochs only grow: on every node, each session's connects carry rising epochs.
                for node in nodes {
                    var last: [String: UInt64] = [:]
                    for event in try node.events() where event.kind == .connected {
                        #expect(event.epoch > (last[event.sessionName.value] ?? 0), "\(event)")
                        last[event.sessionName.value] = event.epoch
                    }
                }
            }
        }
    }
}
