import CustodyTesting
import EtcdGateway
import Foundation
import Synchronization
import Testing

@Suite("EtcdGateway against a real etcd")
struct EtcdGatewayTests {
    @Test func txnComparesPutsAndReportsTheFailedBranch() async throws {
        let etcd = try await offPool { try RunningEtcd("gateway-txn") }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: [etcd.url])
        let claim = EtcdTxn(
            compare: [.absent("/t/session")],
            success: [.put(key: "/t/session", value: Data("owner-a".utf8)), .put(key: "/t/slot", value: Data("s".utf8))],
            failure: [.range(key: "/t/session")])
        let first = try await gateway.txn(claim)
        #expect(first.succeeded)
        #expect(first.revision > 1)
        // The same Txn again: the key exists, so the failure branch runs and shows it.
        let second = try await gateway.txn(claim)
        #expect(!second.succeeded)
        let seen = try #require(second.responses.first?.keyValues.first)
        #expect(String(decoding: seen.value, as: UTF8.self) == "owner-a")
        #expect(seen.modRevision == first.revision)
        // Conditioned on the mod revision read: only the first of two writers wins.
        let move = EtcdTxn(
            compare: [EtcdCompare(key: "/t/session", .modRevision(seen.modRevision))],
            success: [.put(key: "/t/session", value: Data("owner-b".utf8))])
        #expect(try await gateway.txn(move).succeeded)
        #expect(try await !gateway.txn(move).succeeded)
        let (prefix, _) = try await gateway.range("/t/", rangeEnd: prefixEnd(of: "/t/"))
        #expect(prefix.map(\.keyString) == ["/t/session", "/t/slot"])
        await gateway.shutdown()
    }

    @Test func aComparisonHoldsLocallyExactlyWhenEtcdSaysItHolds() async throws {
        let etcd = try await offPool { try RunningEtcd("gateway-compare") }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: [etcd.url])
        let lease = try await gateway.grantLease(ttl: 30)
        try await gateway.put("/c/key", Data("value".utf8), lease: lease.id)
        let written = try await gateway.put("/c/key", Data("other".utf8), lease: lease.id)
        let (found, _) = try await gateway.range("/c/key")
        let kv = try #require(found.first)
        #expect(kv.modRevision == written && kv.version == 2)
        var compares: [EtcdCompare] = []
        for key in ["/c/key", "/c/absent"] {
            for result: EtcdCompare.Result in [.equal, .notEqual, .greater, .less] {
                for target: EtcdCompare.Target in [
                    .createRevision(0), .createRevision(kv.createRevision), .modRevision(written), .modRevision(written - 1),
                    .version(2), .version(3), .lease(lease.id), .lease(0), .value(Data("other".utf8)), .value(Data("a".utf8)),
                    .value(Data("z".utf8)),
                ] {
                    compares.append(EtcdCompare(key: key, target, result))
                }
            }
        }
        var held = 0
        for compare in compares {
            let local = compare.holds(for: compare.key == "/c/key" ? kv : nil)
            let remote = try await gateway.txn(EtcdTxn(compare: [compare])).succeeded
            #expect(local == remote, "\(compare.key) \(compare.target) \(compare.result)")
            if remote { held += 1 }
        }
        #expect(held > 10 && held < compares.count - 10)
        await gateway.shutdown()
    }

    @Test func manyConcurrentCallsOnThePool() async throws {
        let etcd = try await offPool { try RunningEtcd("gateway-pool") }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: [etcd.url], connections: 32)
        // Shut down whatever happens: a client dropped unshut stops the whole test run.
        let revisions: [Int64]
        do {
            revisions = try await fourHundredClaims(gateway)
        } catch {
            await gateway.shutdown()
            throw error
        }
        // Each write got a revision of its own.
        #expect(Set(revisions).count == 400)
        let (keys, _) = try await gateway.range("/p/", rangeEnd: prefixEnd(of: "/p/"))
        #expect(keys.count == 400)
        await gateway.shutdown()
    }

    private func fourHundredClaims(_ gateway: EtcdGateway) async throws -> [Int64] {
        try await withThrowingTaskGroup(of: Int64.self) { group in
            for index in 0..<400 {
                group.addTask {
                    try await gateway.txn(EtcdTxn(
                        compare: [.absent("/p/\(index)")], success: [.put(key: "/p/\(index)", value: Data([1]))])).revision
                }
            }
            var all: [Int64] = []
            for try await revision in group { all.append(revision) }
            return all
        }
    }

    @Test func leasesKeepKeysAliveAndTakeThemWhenTheyLapse() async throws {
        let etcd = try await offPool { try RunningEtcd("gateway-lease") }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: [etcd.url])
        let lease = try await gateway.grantLease(ttl: 2)
        #expect(lease.ttl == 2)
        try await gateway.put("/l/node", Data("n1".utf8), lease: lease.id)
        #expect(try await gateway.keepAlive(lease.id) == 2)
        #expect(try await gateway.range("/l/node").keyValues.first?.lease == lease.id)
        try await gateway.revokeLease(lease.id)
        #expect(try await gateway.range("/l/node").keyValues.isEmpty)
        // A lapsed (here: revoked) lease answers a keepalive with no time to live.
        #expect(try await gateway.keepAlive(lease.id) == 0)
        await gateway.shutdown()
    }

    @Test func watchStreamsPutsAndDeletesWithPreviousValues() async throws {
        let etcd = try await offPool { try RunningEtcd("gateway-watch") }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: [etcd.url])
        let seen = Mutex<[String]>([])
        let created = AsyncStream<Void>.makeStream()
        let watcher = Task {
            try await gateway.watch("/w/", rangeEnd: prefixEnd(of: "/w/")) { update in
                if update.created { created.continuation.yield() }
                for event in update.events {
                    let before = event.previous.map { String(decoding: $0.value, as: UTF8.self) } ?? "-"
                    let now = String(decoding: event.keyValue.value, as: UTF8.self)
                    seen.withLock { $0.append("\(event.kind) \(event.keyValue.keyString) \(before)>\(now)") }
                }
            }
        }
        var iterator = created.stream.makeAsyncIterator()
        _ = await iterator.next()
        try await gateway.put("/w/a", Data("1".utf8))
        try await gateway.put("/w/a", Data("2".utf8))
        try await gateway.delete("/w/a")
        try await gateway.put("/x/outside", Data("0".utf8))
        let deadline = Date().addingTimeInterval(10)
        while seen.withLock({ $0.count }) < 3, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        watcher.cancel()
        _ = await watcher.result
        #expect(seen.withLock { $0 } == ["put /w/a ->1", "put /w/a 1>2", "delete /w/a 2>"])
        await gateway.shutdown()
    }

    @Test func noAnswerIsUnreachable() async throws {
        let port = try freeLoopbackPort()
        let gateway = EtcdGateway(endpoints: ["http://127.0.0.1:\(port)"], requestTimeout: 1)
        await #expect(throws: EtcdGatewayError.self) { try await gateway.range("/nothing") }
        await gateway.shutdown()
    }

    @Test func aStoppedMemberIsPassedOverForAnotherOfTheCluster() async throws {
        let etcd = try await offPool { try RunningEtcd("gateway-three", members: 3) }
        defer { etcd.cleanUp() }
        let gateway = EtcdGateway(endpoints: etcd.clientURLs, requestTimeout: 2)
        try await gateway.put("/m/before", Data("1".utf8))
        etcd.stop(member: 0)
        try await gateway.put("/m/after", Data("2".utf8))
        #expect(try await gateway.range("/m/", rangeEnd: prefixEnd(of: "/m/")).keyValues.count == 2)
        await gateway.shutdown()
    }
}

@Suite("EtcdTxn's JSON body")
struct EtcdTxnBodyTests {
    @Test func theWrittenBodyIsTheJSONTheEncoderWrites() throws {
        let txn = EtcdTxn(
            compare: [
                .absent("/k/ä"), EtcdCompare(key: "/k/m", .modRevision(42)), EtcdCompare(key: "/k/v", .version(3), .greater),
                EtcdCompare(key: "/k/x", .value(Data([0, 255, 7])), .notEqual), EtcdCompare(key: "/k/l", .lease(-9_000_000_000), .less),
            ],
            success: [
                .put(key: "/k/p", value: Data("{\"a\":\"\\\"\"}".utf8), lease: 7), .put(key: "/k/q", value: Data()),
                .delete(key: "/k/d"), .delete(key: "/k/", rangeEnd: prefixEnd(of: "/k/")),
            ],
            failure: [.range(key: "/k/r"), .range(key: "/k/", rangeEnd: "/k0", limit: 5)])
        let written = try JSONSerialization.jsonObject(with: Data(buffer: txn.jsonBody())) as? NSDictionary
        let encoded = try JSONSerialization.jsonObject(with: JSONEncoder().encode(txn)) as? NSDictionary
        #expect(written != nil)
        #expect(written == encoded)
        let empty = try JSONSerialization.jsonObject(with: Data(buffer: EtcdTxn().jsonBody())) as? NSDictionary
        #expect(empty == (try JSONSerialization.jsonObject(with: JSONEncoder().encode(EtcdTxn())) as? NSDictionary))
    }
}
