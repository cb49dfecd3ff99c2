import CustodyTesting
import EtcdGateway
import Foundation
import Testing

@testable import ClusterOwnership

@Suite("Cluster writes batched into Txns, against a real etcd")
struct ClusterWriteBatcherTests {
    static func claim(_ name: String, slot: String) -> ClusterWrite {
        ClusterWrite(
            compare: [.absent(name), .absent(slot)],
            success: [.put(key: name, value: Data("v".utf8)), .put(key: slot, value: Data(name.utf8))],
            reads: [.range(key: name), .range(key: slot)], keys: [name, slot])
    }

    @Test func aFailedConditionFailsOnlyItsOwnWriteAndTheOthersAreWrittenAfterAll() async throws {
        let etcd = try await offPool { try RunningEtcd("batcher") }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: [etcd.url])
        let lease = try await gateway.grantLease(ttl: 30)
        try await gateway.put("/b/node", Data("n1".utf8), lease: lease.id)
        let taken = try await gateway.put("/b/s/taken", Data("someone".utf8))
        // One Txn in flight at a time: whatever waits meanwhile goes in the next, together.
        let batcher = ClusterWriteBatcher(gateway: gateway, nodeKey: "/b/node", maxInFlight: 1, maxWrites: 32)
        batcher.use(lease: lease.id)
        let outcomes = await withTaskGroup(of: (String, ClusterWriteOutcome).self) { group in
            for index in 0..<40 {
                let name = index == 17 ? "/b/s/taken" : "/b/s/\(index)"
                group.addTask { (name, await batcher.submit(Self.claim(name, slot: "/b/slot/\(index)"))) }
            }
            var all: [String: ClusterWriteOutcome] = [:]
            for await (name, outcome) in group { all[name] = outcome }
            return all
        }
        var revisions = Set<Int64>()
        for (name, outcome) in outcomes {
            switch outcome {
            case .applied(let revision):
                #expect(name != "/b/s/taken")
                revisions.insert(revision)
            case .conflict(let reads):
                #expect(name == "/b/s/taken")
                #expect(reads.value("/b/s/taken")?.modRevision == taken)
                #expect(reads.value("/b/slot/17") == nil)
            case .lapsed, .failed:
                Issue.record("\(name): \(outcome)")
            }
        }
        // 39 writes in fewer Txns than writes.
        #expect(revisions.count < 39)
        let (sessions, _) = try await gateway.range("/b/s/", rangeEnd: prefixEnd(of: "/b/s/"))
        #expect(sessions.count == 40)
        let (slots, _) = try await gateway.range("/b/slot/", rangeEnd: prefixEnd(of: "/b/slot/"))
        #expect(slots.count == 39)
        #expect(!slots.contains { $0.keyString == "/b/slot/17" })

        // Two writes of one key never share a Txn: the second's condition is about the first.
        async let first = batcher.submit(Self.claim("/b/s/twice", slot: "/b/slot/a"))
        async let second = batcher.submit(Self.claim("/b/s/twice", slot: "/b/slot/b"))
        let both = await [first, second]
        #expect(both.filter { if case .applied = $0 { true } else { false } }.count == 1)
        #expect(both.filter { if case .conflict = $0 { true } else { false } }.count == 1)

        // Without the node's key on its lease, nothing is written.
        try await gateway.revokeLease(lease.id)
        let late = await batcher.submit(Self.claim("/b/s/late", slot: "/b/slot/late"))
        guard case .lapsed = late else {
            Issue.record("a write after the lease went: \(late)")
            return
        }
        #expect(try await gateway.range("/b/s/late").keyValues.isEmpty)
        await gateway.shutdown()
    }
}
