import CustodyTesting
import Foundation
import LedgerCore
import Testing

extension ClusterSuites {
    /// The seed's rules with the sessions spread over three real `custody` nodes on one real
    /// etcd, driven by mosquitto clients over 127.0.0.1.
    @Suite("Three custody nodes on one etcd", .serialized)
    struct ThreeNodeTests {
        @Test func anotherClientIsRefusedASessionHeldOnAnotherNode() async throws {
            try await offPool {
                try withCluster("refused") { cluster in
                    let held = try HeldSession(port: cluster[0].port, session: "s1", user: "alice")
                    defer { held.kill() }
                    try held.wait(for: "CONNACK (0)")
                    // R6 from n2: 0x87, nothing written in etcd, recorded as rejected by n2.
                    #expect(try connackCode(port: cluster[1].port, session: "s1", user: "bob") == 0x87)
                    let rejected = try waitForEvent(cluster[1]) { $0.kind == .rejected(.ownedByAnotherClient) }
                    #expect(rejected.authenticationName.value == "bob")
                    let connected = try waitForEvent(cluster[0]) { $0.kind == .connected && $0.sessionName.value == "s1" }
                    #expect(connected.epoch > 0)
                    #expect(rejected.epoch >= connected.epoch)
                    // Alice's connection is untouched.
                    usleep(300_000)
                    #expect(!held.output.contains("DISCONNECT"))
                    #expect(held.isRunning)
                }
            }
        }

        @Test func theSameClientTakesItsSessionOverFromAnotherNode() async throws {
            try await offPool {
                try withCluster("takeover") { cluster in
                    let first = try HeldSession(port: cluster[0].port, session: "s1", user: "alice")
                    defer { first.kill() }
                    try first.wait(for: "CONNACK (0)")
                    let second = try HeldSession(port: cluster[1].port, session: "s1", user: "alice")
                    defer { second.kill() }
                    try second.wait(for: "CONNACK (0)")
                    // n1 sees the move in its watch: DISCONNECT 0x8E, recorded as taken over.
                    try first.wait(for: "Received DISCONNECT (142)")
                    let taken = try waitForEvent(cluster[0]) { $0.kind == .disconnected(.sessionTakenOver) }
                    let moved = try waitForEvent(cluster[1]) { $0.kind == .connected && $0.sessionName.value == "s1" }
                    let before = try waitForEvent(cluster[0]) { $0.kind == .connected && $0.sessionName.value == "s1" }
                    // The epochs order the two nodes' events: n1's interval ends where n2's starts.
                    #expect(before.epoch < moved.epoch)
                    #expect(taken.epoch == moved.epoch)
                    #expect(!second.output.contains("DISCONNECT ("))
                }
            }
        }

        @Test func theCapCountsTheSessionsOfEveryNode() async throws {
            try await offPool {
                try withCluster("cap", extra: ["--max-sessions-per-client", "2"]) { cluster in
                    let a = try HeldSession(port: cluster[0].port, session: "c1", user: "carol")
                    defer { a.kill() }
                    try a.wait(for: "CONNACK (0)")
                    let b = try HeldSession(port: cluster[1].port, session: "c2", user: "carol")
                    defer { b.kill() }
                    try b.wait(for: "CONNACK (0)")
                    // R3 on the third node: carol's two live sessions are on the other two.
                    #expect(try connackCode(port: cluster[2].port, session: "c3", user: "carol") == 0x97)
                    try waitForEvent(cluster[2]) { $0.kind == .rejected(.quotaExceeded) }
                    // A disconnected, unexpired session still counts (DESIGN.md §1: online and offline).
                    b.kill()
                    try waitForEvent(cluster[1]) { $0.kind == .disconnected(.connectionLost) && $0.sessionName.value == "c2" }
                    #expect(try connackCode(port: cluster[2].port, session: "c3", user: "carol") == 0x97)
                    // A session that ends with its connection (expiry 0) frees its slot.
                    a.kill()
                    let short = try HeldSession(port: cluster[0].port, session: "c1", user: "carol", expiry: 0)
                    defer { short.kill() }
                    try short.wait(for: "CONNACK (0)")
                    short.kill()
                    try waitForEvent(cluster[0]) { $0.kind == .disconnected(.connectionLost) && $0.expiryInterval == 0 }
                    #expect(try connackCode(port: cluster[2].port, session: "c3", user: "carol") == 0)
                }
            }
        }

        @Test func aKilledNodesSessionsAreResumableElsewhereAfterItsLease() async throws {
            try await offPool {
                try withCluster("killed", leaseSeconds: 2) { cluster in
                    let held = try HeldSession(port: cluster[2].port, session: "k1", user: "dave")
                    defer { held.kill() }
                    try held.wait(for: "CONNACK (0)")
                    let connected = try waitForEvent(cluster[2]) { $0.kind == .connected }
                    cluster.killNode(2)
                    held.kill()
                    let killedAt = Date()
                    // Once n3's lease lapses, one survivor records the connection lost, expiry from then.
                    var lost: [LedgerEvent] = []
                    let deadline = Date().addingTimeInterval(15)
                    while lost.isEmpty, Date() < deadline {
                        lost = try (cluster[0].events() + cluster[1].events()).filter { $0.kind == .disconnected(.connectionLost) }
                        usleep(50_000)
                    }
                    #expect(lost.count == 1)
                    let event = try #require(lost.first)
                    #expect(event.connection == connected.connection)
                    #expect(event.epoch > connected.epoch)
                    #expect(Date().timeIntervalSince(killedAt) >= 1)
                    // Still the owner's: another client is refused, the owner resumes on a survivor.
                    #expect(try connackCode(port: cluster[0].port, session: "k1", user: "erin") == 0x87)
                    let resumed = try HeldSession(port: cluster[1].port, session: "k1", user: "dave")
                    defer { resumed.kill() }
                    try resumed.wait(for: "CONNACK (0)")
                    let again = try waitForEvent(cluster[1]) { $0.kind == .connected && $0.sessionName.value == "k1" }
                    #expect(again.epoch > event.epoch)
                }
            }
        }

        @Test func etcdStoppedRefusesConnectsWithServerUnavailable() async throws {
            try await offPool {
                try withCluster("r8", nodes: 1, leaseSeconds: 3) { (cluster: TestCluster) throws -> Void in
                    let before = try connackCode(port: cluster[0].port, session: "r1", user: "frank")
                    #expect(before == 0)
                    let held = try HeldSession(port: cluster[0].port, session: "r0", user: "frank")
                    defer { held.kill() }
                    try held.wait(for: "CONNACK (0)")
                    cluster.etcd.stop()
                    // The node cannot renew its lease: at two thirds of it, it stops serving its
                    // sessions (v5 DISCONNECT 0x9C Use another server: 0x88 is a CONNACK code
                    // only), before etcd could let the lease go and another node take them. The
                    // wait allows the client's report and a busy machine a second more.
                    try held.wait(for: "Received DISCONNECT (156)", timeout: Double(cluster.leaseSeconds) + 1)
                    let lapsed = try waitForEvent(cluster[0]) { $0.kind == .disconnected(.serverError) }
                    #expect(lapsed.sessionName.value == "r0")
                    // R8: no etcd, nothing granted; 0x88 (v5) whatever the node has decided before.
                    let fresh = try connackCode(port: cluster[0].port, session: "r2", user: "frank")
                    let resumed = try connackCode(port: cluster[0].port, session: "r1", user: "frank")
                    #expect(fresh == 0x88)
                    #expect(resumed == 0x88)
                    // r1 and r0, before etcd stopped; nothing after.
                    let granted = try cluster[0].events().filter { $0.kind == .connected }
                    #expect(granted.count == 2)
                }
            }
        }
    }
}
