import CLMDB
import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Testing

// The keys every commit changes (head, connections, digest) live in LMDB's unnamed database
// (RECORD-FORMAT.md); a ledger written before keeps them in `meta`. Such a ledger is made
// here by moving them back, then opened.

/// Moves `0x00 ‖ name` of the unnamed database to `name` in `meta`, for the three keys, in a
/// closed ledger: the layout an earlier version wrote.
private func moveToEarlierLayout(_ directory: String) throws {
    var env: OpaquePointer?
    mdb_env_create(&env)
    mdb_env_set_maxdbs(env, 8)
    mdb_env_set_mapsize(env, 64 << 20)
    try #require(mdb_env_open(env, directory, 0, 0o640) == 0)
    defer { mdb_env_close(env) }
    var txn: OpaquePointer?
    try #require(mdb_txn_begin(env, nil, 0, &txn) == 0)
    var main: MDB_dbi = 0
    var meta: MDB_dbi = 0
    try #require(mdb_dbi_open(txn, nil, 0, &main) == 0)
    try #require(mdb_dbi_open(txn, "meta", 0, &meta) == 0)
    for name in ["head", "connections", "digest"] {
        var moved = [UInt8(0)] + Array(name.utf8)
        var plain = Array(name.utf8)
        try moved.withUnsafeMutableBytes { movedKey in
            var k = MDB_val(mv_size: movedKey.count, mv_data: movedKey.baseAddress)
            var v = MDB_val()
            try #require(mdb_get(txn, main, &k, &v) == 0, "no \(name) in the unnamed database")
            var value = Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
            try plain.withUnsafeMutableBytes { plainKey in
                try value.withUnsafeMutableBytes { raw in
                    var pk = MDB_val(mv_size: plainKey.count, mv_data: plainKey.baseAddress)
                    var pv = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
                    try #require(mdb_put(txn, meta, &pk, &pv, 0) == 0)
                }
            }
            try #require(mdb_del(txn, main, &k, nil) == 0)
        }
    }
    var formatKey = Array("format".utf8)
    var one: UInt8 = 1
    try formatKey.withUnsafeMutableBytes { k in
        try withUnsafeMutableBytes(of: &one) { v in
            var key = MDB_val(mv_size: k.count, mv_data: k.baseAddress)
            var value = MDB_val(mv_size: 1, mv_data: v.baseAddress)
            try #require(mdb_put(txn, meta, &key, &value, 0) == 0)
        }
    }
    try #require(mdb_txn_commit(txn) == 0)
}

/// The format marker in `meta`.
private func formatMarker(_ directory: String) throws -> UInt8? {
    var env: OpaquePointer?
    mdb_env_create(&env)
    mdb_env_set_maxdbs(env, 8)
    try #require(mdb_env_open(env, directory, UInt32(MDB_RDONLY), 0o640) == 0)
    defer { mdb_env_close(env) }
    var txn: OpaquePointer?
    try #require(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn) == 0)
    defer { mdb_txn_abort(txn) }
    var meta: MDB_dbi = 0
    try #require(mdb_dbi_open(txn, "meta", 0, &meta) == 0)
    var key = Array("format".utf8)
    return key.withUnsafeMutableBytes { raw in
        var k = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
        var v = MDB_val()
        guard mdb_get(txn, meta, &k, &v) == 0, v.mv_size == 1 else { return nil }
        return v.mv_data!.load(as: UInt8.self)
    }
}

/// Whether `name` (as `0x00 ‖ name` in the unnamed database, or as `name` in `meta`) is there.
private func where_(_ directory: String, _ name: String) throws -> (main: Bool, meta: Bool) {
    var env: OpaquePointer?
    mdb_env_create(&env)
    mdb_env_set_maxdbs(env, 8)
    try #require(mdb_env_open(env, directory, UInt32(MDB_RDONLY), 0o640) == 0)
    defer { mdb_env_close(env) }
    var txn: OpaquePointer?
    try #require(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn) == 0)
    defer { mdb_txn_abort(txn) }
    var main: MDB_dbi = 0
    var meta: MDB_dbi = 0
    try #require(mdb_dbi_open(txn, nil, 0, &main) == 0)
    try #require(mdb_dbi_open(txn, "meta", 0, &meta) == 0)
    func has(_ dbi: MDB_dbi, _ key: [UInt8]) -> Bool {
        var key = key
        return key.withUnsafeMutableBytes { raw in
            var k = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
            var v = MDB_val()
            return mdb_get(txn, dbi, &k, &v) == 0
        }
    }
    return (has(main, [0] + Array(name.utf8)), has(meta, Array(name.utf8)))
}

@Suite("The keys every commit changes, in the unnamed database")
struct MetaLayoutTests {
    private static func claim(_ ledger: LMDBSessionLedger, _ session: String) async throws -> ClaimOutcome {
        try await ledger.claim(ClaimRequest(
            authenticationName: AuthenticationName(unchecked: "client-1"), sessionName: SessionName(unchecked: session),
            connection: ledger.nextConnectionNumber(), protocolVersion: .mqtt5, cleanStart: false,
            requestedExpiryInterval: 600, remoteAddress: "127.0.0.1:50000", identity: .authenticated))
    }

    @Test func aLedgerOfTheEarlierLayoutOpensAndMovesThemOnItsNextCommit() async throws {
        try await withMemoryScratchDirectory("meta-layout") { directory in
            let first = try LMDBSessionLedger(directory: directory, checkpointEvery: 5)
            for i in 0..<7 { _ = try await Self.claim(first, "s-\(i)") }
            let head = first.head
            first.close()
            #expect(try where_(directory, "head") == (true, false))
            #expect(try formatMarker(directory) == 2)
            try moveToEarlierLayout(directory)
            #expect(try where_(directory, "head") == (false, true))
            #expect(try formatMarker(directory) == 1)
            // Read-only (custody-audit): read as it is, not marked.
            let readOnly = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
            #expect(try readOnly.read { try $0.head() } == head)
            readOnly.close()
            #expect(try formatMarker(directory) == 1)

            // Read from `meta`: the head, the connection numbers (none repeats), the digest
            // that verify from the checkpoint proves.
            let reopened = try LMDBSessionLedger(directory: directory, checkpointEvery: 5)
            #expect(reopened.head.sequence >= head.sequence, "recovery may add events after the head it read")
            #expect(try reopened.verifyFromNewestCheckpoint().isIntact)
            let outcome = try await Self.claim(reopened, "s-new")
            guard case .granted = outcome else {
                Issue.record("not granted: \(outcome)")
                reopened.close()
                return
            }
            // The highest connection number, read from `meta`, kept the new one above all others.
            let records = try reopened.records()
            let newest = try #require(records.last { $0.event.sessionName.value == "s-new" }?.event.connection)
            let before = records.filter { $0.event.sessionName.value != "s-new" }.map(\.event.connection)
            #expect(before.allSatisfy { $0 < newest }, "\(before) \(newest)")
            #expect(try reopened.verify().isIntact)
            reopened.close()
            for name in ["head", "digest", "connections"] {
                #expect(try where_(directory, name) == (true, false), "\(name) moved by the commit")
            }
            #expect(try formatMarker(directory) == 2, "marked 2 by the writable open")
            let again = try LMDBSessionLedger(directory: directory, checkpointEvery: 5)
            defer { again.close() }
            #expect(try again.verifyFromNewestCheckpoint().isIntact)
            #expect(try again.session(SessionName(unchecked: "s-new")) != nil)
        }
    }
}
