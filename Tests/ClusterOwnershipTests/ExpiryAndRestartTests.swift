import ClusterOwnership
import CustodyTesting
import EtcdGateway
import Foundation
import LedgerCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension ClusterSuites {
    @Suite("Cluster expiry and restart", .serialized)
    struct ExpiryAndRestartTests {
        /// A start that fails after the node joined etcd (here: its listener's port is taken)
        /// exits 1 naming the problem, as a single node's does.
        @Test func aStartFailureAfterJoiningExitsCleanly() async throws {
            try await offPool {
                let etcd = try RunningEtcd("join-fail")
                defer { etcd.cleanUp() }
                let taken = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                defer { close(taken) }
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_addr.s_addr = inet_addr("127.0.0.1")
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let bound = withUnsafeMutablePointer(to: &address) { pointer in
                    pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
                        bind(taken, raw, length) == 0 && listen(taken, 1) == 0 && getsockname(taken, raw, &length) == 0
                    }
                }
                try #require(bound)
                let port = Int(UInt16(bigEndian: address.sin_port))
                let (status, _, error) = try run(try builtProduct("custody").path, [
                    "--data-dir", scratchDirectory("join-fail"), "--listen", "127.0.0.1:\(port)",
                    "--cluster-etcd", etcd.url, "--node-id", "n1", "--cluster-lease-seconds", "2",
                ], timeout: 60)
                #expect(status == 1, "exit \(status): \(error)")
                #expect(error.contains("127.0.0.1:\(port)"), "\(error)")
            }
        }

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

        @Test func theExpiringNodeFreesSlotsThatNoSessionHolds() async throws {
            try await offPool {
                try withCluster("stale-slots", nodes: 1, leaseSeconds: 2) { cluster in
                    let gateway = EtcdGateway(endpoints: cluster.etcd.clientURLs)
                    defer { try? blocking { await gateway.shutdown() } }
                    let keys = ClusterKeys()
                    let alice = AuthenticationName(unchecked: "alice")
                    let prefix = keys.slots(of: alice)
                    let held = try HeldSession(port: cluster[0].port, session: "real", user: "alice")
                    defer { held.kill() }
                    try held.wait(for: "CONNACK (0)")
                    // Nine slots of alice that no session holds (as a leak would leave them):
                    // with her real session, she is at her cap of ten.
                    try blocking {
                        for index in 1...9 { try await gateway.put(keys.slot(index, of: alice), Data("ghost-\(index)".utf8)) }
                    }
                    #expect(try blocking { try await gateway.range(prefix, rangeEnd: prefixEnd(of: prefix)).keyValues.count } == 10)
                    // Refused (0x97) until the expiring node frees them, within a lease or two.
                    let deadline = Date().addingTimeInterval(20)
                    var code = -1
                    while Date() < deadline {
                        code = try connackCode(port: cluster[0].port, session: "second", user: "alice")
                        if code == 0 { break }
                        usleep(500_000)
                    }
                    #expect(code == 0)
                    let after = try blocking { try await gateway.range(prefix, rangeEnd: prefixEnd(of: prefix)).keyValues }
                    // The real session's slot stays (connected), and so does the second's
                    // (waiting to expire); the ghosts are gone.
                    let names = Set(after.map { String(decoding: $0.value, as: UTF8.self) })
                    #expect(names == ["real", "second"], "\(names)")
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
