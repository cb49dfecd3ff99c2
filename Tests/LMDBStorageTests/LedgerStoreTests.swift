import CLMDB
import CustodyTesting
import Foundation
import LedgerCore
import Synchronization
import Testing

@testable import LMDBStorage

/// Shared state for escaping callbacks. A class, because a `Mutex` local captured by an
/// escaping closure was miscompiled in release builds (see Benchmarks/RESULTS.md notes).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
}

func scratchDirectory() -> String { CustodyTesting.scratchDirectory("store") }

/// Writes raw LMDB data that Custody did not write, to see how opening refuses it.
func writeForeignLMDB(at directory: String, tables: [String], format: UInt8?) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    var env: OpaquePointer?
    #expect(mdb_env_create(&env) == 0)
    mdb_env_set_maxdbs(env, 8)
    #expect(mdb_env_open(env, directory, 0, 0o644) == 0)
    var txn: OpaquePointer?
    #expect(mdb_txn_begin(env, nil, 0, &txn) == 0)
    for table in tables {
        var dbi: MDB_dbi = 0
        #expect(mdb_dbi_open(txn, table, UInt32(MDB_CREATE), &dbi) == 0)
        if table == "meta", var format {
            var keyBytes = Array("format".utf8)
            keyBytes.withUnsafeMutableBytes { key in
                withUnsafeMutableBytes(of: &format) { value in
                    var k = MDB_val(mv_size: key.count, mv_data: key.baseAddress)
                    var v = MDB_val(mv_size: 1, mv_data: value.baseAddress)
                    #expect(mdb_put(txn, dbi, &k, &v, 0) == 0)
                }
            }
        }
    }
    #expect(mdb_txn_commit(txn) == 0)
    mdb_env_close(env)
}

@Suite("LMDB store")
struct LedgerStoreTests {
    @Test func readOnlyOpeningNamesWhatIsMissing() throws {
        let missing = scratchDirectory()
        #expect(throws: LedgerError.notALedger(path: missing, detail: "no such directory")) {
            try LedgerStore(directory: missing, options: LedgerStoreOptions(readOnly: true))
        }
        let empty = scratchDirectory()
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        #expect(throws: LedgerError.notALedger(path: empty, detail: "no data.mdb in it")) {
            try LedgerStore(directory: empty, options: LedgerStoreOptions(readOnly: true))
        }
    }

    @Test func foreignLMDBIsNotALedger() throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try writeForeignLMDB(at: directory, tables: ["other"], format: nil)
        #expect(throws: LedgerError.notALedger(path: directory, detail: "it has no 'log' table")) {
            try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
        }
    }

    @Test func newerFormatIsRefused() throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try writeForeignLMDB(at: directory, tables: ["log", "sessions", "clients", "deadlines", "meta"], format: 3)
        #expect(throws: LedgerError.unsupportedFormat(found: 3, supported: 2)) {
            try LedgerStore(directory: directory)
        }
    }

    @Test func claimsWaitingTogetherShareOneCommit() async throws {
        try await offPool {
            let directory = scratchDirectory()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let store = try LedgerStore(directory: directory)
            let writer = try LedgerWriter(store: store, policy: try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 100))
            let commits = Locked<[Int]>([])
            writer.onCommit = { commit in commits.withLock { $0.append(commit.events) } }
            _ = try writer.recover()
            writer.start()

            let count = 2_000
            let granted = Locked(0)
            let group = DispatchGroup()
            for i in 0..<count {
                group.enter()
                let request = ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "client-\(i % 40)"),
                    sessionName: SessionName(unchecked: "session-\(i)"), connection: writer.nextConnectionNumber(),
                    requestedExpiryInterval: 60)
                writer.claim(request) { result in
                    if case .success(.granted) = result { granted.withLock { $0 += 1 } }
                    group.leave()
                }
            }
            group.wait()
            writer.stop()
            #expect(granted.withLock { $0 } == count)
            let sizes = commits.withLock { $0 }
            #expect(sizes.reduce(0, +) == count)
            // One caller per commit would need `count` commits; group commit needs far fewer.
            #expect(sizes.count < count / 4, "commits: \(sizes.count)")
            #expect(try store.read { try $0.verify() }.isIntact)
            store.close()
        }
    }

    @Test func requestsAfterStopFailAsClosed() throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try LedgerStore(directory: directory)
        let writer = try LedgerWriter(store: store, policy: .default)
        _ = try writer.recover()
        writer.start()
        writer.stop()
        let answer = Locked<Result<ClaimOutcome, LedgerError>?>(nil)
        writer.claim(ClaimRequest(
            authenticationName: AuthenticationName(unchecked: "a"), sessionName: SessionName(unchecked: "s"),
            connection: 1)) { result in answer.withLock { $0 = result } }
        #expect(answer.withLock { $0 } == .failure(.closed))
        #expect(try store.read { try $0.head() } == .empty)
        store.close()
    }

    @Test func headAndConnectionsPersistAcrossReopen() async throws {
        try await offPool {
            let directory = scratchDirectory()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            var store = try LedgerStore(directory: directory)
            var writer = try LedgerWriter(store: store, policy: .default)
            _ = try writer.recover()
            writer.start()
            let connection = writer.nextConnectionNumber() + 41
            let done = DispatchSemaphore(value: 0)
            writer.claim(ClaimRequest(
                authenticationName: AuthenticationName(unchecked: "a"), sessionName: SessionName(unchecked: "s"),
                connection: connection, requestedExpiryInterval: 60)) { _ in done.signal() }
            done.wait()
            writer.stop()
            let head = try store.read { try $0.head() }
            store.close()

            store = try LedgerStore(directory: directory)
            writer = try LedgerWriter(store: store, policy: .default)
            #expect(writer.currentHead == head)
            #expect(writer.nextConnectionNumber() == connection + 1)
            let report = try writer.recover()
            #expect(report.disconnected.map(\.kind) == [.disconnected(.brokerRestart)])
            #expect(report.disconnected.first?.sequence == head.sequence + 1)
            store.close()
        }
    }
}

@Suite("Ledger errors")
struct LedgerErrorCodeTests {
    /// LedgerCore names a full store without seeing LMDB: its code must stay LMDB's.
    @Test func mapFullCodeIsLMDBs() {
        #expect(LedgerError.mapFullCode == MDB_MAP_FULL)
        #expect(LedgerError.storage(operation: "mdb_put", code: MDB_MAP_FULL, message: "full").isMapFull)
    }
}
