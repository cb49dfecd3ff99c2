import CLMDB
import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Testing

/// A ledger of some churn with a checkpoint every `every` records, through the real ledger.
func churnedLedger(_ directory: String, every: UInt64, cycles: Int, clock: ManualClock = ManualClock()) async throws -> LedgerHead {
    let ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: every)
    defer { ledger.close() }
    for i in 0..<cycles {
        let connection = ledger.nextConnectionNumber()
        let outcome = try await ledger.claim(ClaimRequest(
            authenticationName: AuthenticationName(unchecked: "client-\(i % 7)"),
            sessionName: SessionName(unchecked: "s-\(i % 13)"), connection: connection, protocolVersion: .mqtt5,
            cleanStart: false, requestedExpiryInterval: UInt32(i % 3) * 300, remoteAddress: "127.0.0.1:5000",
            identity: .authenticated))
        if case .granted = outcome, i % 5 != 0 {
            _ = try await ledger.release(ReleaseRequest(
                sessionName: SessionName(unchecked: "s-\(i % 13)"), connection: connection, reason: .connectionLost))
        }
        clock.advance(seconds: 1)
    }
    return ledger.head
}

/// Rewrites the log from `sequence` on as an intruder who knows the chain would: the record
/// at `sequence` is changed by `edit`, and it and every later record are sealed again, and
/// the stored head with them. Only a check of what the records say can find that.
func rechainedEdit(in directory: String, at sequence: UInt64, _ edit: (inout [UInt8]) -> Void) throws {
    var env: OpaquePointer?
    mdb_env_create(&env)
    mdb_env_set_maxdbs(env, 8)
    mdb_env_set_mapsize(env, 256 << 20)
    try #require(mdb_env_open(env, directory, 0, 0o640) == 0)
    defer { mdb_env_close(env) }
    var txn: OpaquePointer?
    mdb_txn_begin(env, nil, 0, &txn)
    var log: MDB_dbi = 0
    var main: MDB_dbi = 0
    mdb_dbi_open(txn, "log", UInt32(MDB_INTEGERKEY), &log)
    mdb_dbi_open(txn, nil, 0, &main)
    func get(_ s: UInt64) -> [UInt8]? {
        var key = s
        return withUnsafeMutableBytes(of: &key) { keyBytes in
            var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
            var v = MDB_val()
            guard mdb_get(txn, log, &k, &v) == 0 else { return nil }
            return Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
        }
    }
    func put(_ s: UInt64, _ bytes: [UInt8]) {
        var key = s
        var bytes = bytes
        withUnsafeMutableBytes(of: &key) { keyBytes in
            bytes.withUnsafeMutableBytes { raw in
                var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
                var v = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
                mdb_put(txn, log, &k, &v, 0)
            }
        }
    }
    var previous = sequence == 1 ? ChainHash.genesis : get(sequence - 1)!.withUnsafeBytes { EventRecordFormat.storedHash($0) }
    var current = sequence
    var last = LedgerHead.empty
    while var bytes = get(current) {
        if current == sequence { edit(&bytes) }
        let hash = bytes.withUnsafeBytes { EventRecordFormat.chainHash(of: $0, previous: previous) }
        hash.withBytes { h in for i in 0..<32 { bytes[bytes.count - 32 + i] = h[i] } }
        put(current, bytes)
        let timestamp = bytes.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: Int64.self)) }
        last = LedgerHead(sequence: current, timestamp: timestamp, hash: hash)
        previous = hash
        current += 1
    }
    var head = [UInt8](repeating: 0, count: 48)
    withUnsafeBytes(of: last.sequence.littleEndian) { for i in 0..<8 { head[i] = $0[i] } }
    withUnsafeBytes(of: last.timestamp.littleEndian) { for i in 0..<8 { head[8 + i] = $0[i] } }
    last.hash.withBytes { for i in 0..<32 { head[16 + i] = $0[i] } }
    // The head lives in the unnamed database, as 0x00 ‖ "head" (RECORD-FORMAT.md).
    var headKey = [0] + Array("head".utf8)
    headKey.withUnsafeMutableBytes { k in
        head.withUnsafeMutableBytes { v in
            var key = MDB_val(mv_size: k.count, mv_data: k.baseAddress)
            var value = MDB_val(mv_size: v.count, mv_data: v.baseAddress)
            mdb_put(txn, main, &key, &value, 0)
        }
    }
    try #require(mdb_txn_commit(txn) == 0)
}

@Suite("custody-audit and checkpoints")
struct CheckpointAuditTests {
    @Test("verify proves the newest checkpoint; export prints checkpoints; history skips them")
    func verifyExportHistoryWithCheckpoints() async throws {
        try await withMemoryScratchDirectory("audit-checkpoints") { directory in
            let head = try await churnedLedger(directory, every: 10, cycles: 40)
            let newest = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true)).readAndClose { try $0.lastCheckpoint() }
            let verify = try await runAudit(["verify", "--data-dir", directory])
            #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
            #expect(verify.stdout == "verify: ok events=\(head.sequence) head=\(head.hash.hex) from_checkpoint=\(newest)\n")
            let full = try await runAudit(["verify", "--full", "--data-dir", directory])
            #expect(full.stdout == "verify: ok events=\(head.sequence) head=\(head.hash.hex)\n")
            let json = try await runAudit(["verify", "--json", "--data-dir", directory]).json()
            #expect(json["checkedFrom"] as? Int == Int(newest))

            let export = try await runAudit(["export", "--data-dir", directory]).jsonLines()
            #expect(export.count == Int(head.sequence))
            let checkpoints = export.filter { $0["kind"] as? String == "checkpoint" }
            #expect(checkpoints.count >= 4)
            for checkpoint in checkpoints {
                #expect((checkpoint["projectionDigest"] as? String)?.count == 64)
                #expect(checkpoint["liveSessions"] is Int)
            }
            let history = try await runAudit(["history", "--session", "s-1", "--json", "--data-dir", directory]).jsonLines()
            #expect(!history.isEmpty)
            #expect(history.allSatisfy { $0["kind"] as? String != "checkpoint" })
        }
    }

    @Test("a checkpoint that lies about the projection is found, even with its chain sealed again")
    func lyingCheckpointIsFound() async throws {
        try await withMemoryScratchDirectory("audit-checkpoints") { directory in
            _ = try await churnedLedger(directory, every: 10, cycles: 40)
            let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
            let newest = try store.read { try $0.lastCheckpoint() }
            store.close()
            try rechainedEdit(in: directory, at: newest) { bytes in bytes[72] ^= 0xFF }  // the digest
            for mode in [[], ["--full"]] {
                let verify = try await runAudit(["verify", "--data-dir", directory] + mode)
                #expect(verify.status == 1, "\(mode)")
                #expect(verify.stdout.contains("first_bad_seq=\(newest)"), "\(mode): \(verify.stdout)")
                #expect(verify.stdout.contains("checkpoint \(newest) disagrees"), "\(mode): \(verify.stdout)")
            }
        }
    }
}
