import CustodyTesting
import Foundation
import LedgerCore
import Testing

extension ClusterSuites {
    @Suite("Cluster expiry and restart", .serialized)
    struct ExpiryAndRestartTests {
        @Test func exactlyOneNodeExpiresADeadline() async throws {
            try await offPool {
                try withCluster("expiry") { cluster in
                    let held = try HeldSession(port: cluster[1].port, session: "e1", user: "alice", expiry: 2)
                    try held.wait(for: "CONNACK (0)")
                    held.kill()
                    try waitForEvent(cluster[1]) { $0.kind == .disconnected(.connectionLost) }
                    // Refused to others until the deadline; free for anyone after it.
                    #expect(try connackCode(port: cluster[0].port, session: "e1", user: "bob") == 0x87)
                    var expired: [(Int, LedgerEvent)] = []
                    let deadline = Date().addingTimeInterval(15)
                    while expired.isEmpty, Date() < deadline {
                        expired = try (0..<3).flatMap { index in
                            try cluster[index].events().filter { $0.kind == .expired(.sessionExpired) }.map { (index, $0) }
                        }
                        usleep(50_000)
                    }
                    usleep(1_500_000)
                    expired = try (0..<3).flatMap { index in
                        try cluster[index].events().filter { $0.kind == .expired(.sessionExpired) }.map { (index, $0) }
                    }
                    #expect(expired.count == 1)
                    // The node that expired it is the one whose lease holds the expiry key.
                    let leader = try #require(cluster[0].stdout.contains("expiry_leader=1") ? 0 : nil)
                    #expect(expired.first?.0 == leader)
                    #expect(try connackCode(port: cluster[2].port, session: "e1", user: "bob") == 0)
                }
            }
        }

        @Test func aRestartedNodeEndsWhatEtcdNoLongerGivesIt() async throws {
            try await offPool {
                try withCluster("restart", nodes: 2, leaseSeconds: 2) { cluster in
                    let directory = cluster[0].directory
                    let held = try HeldSession(port: cluster[0].port, session: "r1", user: "alice")
                    try held.wait(for: "CONNACK (0)")
                    let stay = try HeldSession(port: cluster[0].port, session: "r2", user: "alice")
                    try stay.wait(for: "CONNACK (0)")
                    cluster.killNode(0)
                    held.kill()
                    stay.kill()
                    // After n1's lease, n2 records the loss; alice resumes r1 on n2 meanwhile.
                    try waitForEvent(cluster[1]) { $0.kind == .disconnected(.connectionLost) && $0.sessionName.value == "r1" }
                    let moved = try HeldSession(port: cluster[1].port, session: "r1", user: "alice")
                    defer { moved.kill() }
                    try moved.wait(for: "CONNACK (0)")
                    // n1 again, on its ledger: r1 is no longer its own; r2 still is (disconnected).
                    let again = try cluster.start(node: "n1", directory: directory)
                    cluster.replace(0, with: again)
                    let ended = try waitForEvent(again) { $0.kind == .expired(.notHeldInCluster) }
                    #expect(ended.sessionName.value == "r1")
                    #expect(ended.epoch > 0)
                    let events = try again.events()
                    #expect(!events.contains { $0.kind == .expired(.notHeldInCluster) && $0.sessionName.value == "r2" })
                    // Its owner resumes r2 on n1: still alice's.
                    #expect(try connackCode(port: again.port, session: "r2", user: "bob") == 0x87)
                    #expect(try connackCode(port: again.port, session: "r2", user: "alice") == 0)
                }
            }
        }
    }
}
