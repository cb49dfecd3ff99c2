import CLMDB
import Testing

/// A closed ledger's LMDB environment opened bare, for tests that edit or inspect what the
/// ledger code would not: one transaction (committed when writable), its tables by name (nil:
/// the unnamed database), and keys and values as byte arrays.
struct RawLedger {
    let txn: OpaquePointer

    static func with<R>(_ directory: String, writable: Bool = false, _ body: (RawLedger) throws -> R) throws -> R {
        var env: OpaquePointer?
        mdb_env_create(&env)
        mdb_env_set_maxdbs(env, 8)
        mdb_env_set_mapsize(env, 64 << 20)
        let flags = writable ? 0 : UInt32(MDB_RDONLY)
        try #require(mdb_env_open(env, directory, flags, 0o640) == 0)
        defer { mdb_env_close(env) }
        var txn: OpaquePointer?
        try #require(mdb_txn_begin(env, nil, flags, &txn) == 0)
        let result: R
        do {
            result = try body(RawLedger(txn: txn!))
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        if writable { try #require(mdb_txn_commit(txn) == 0) } else { mdb_txn_abort(txn) }
        return result
    }

    func table(_ name: String?, flags: UInt32 = 0) throws -> MDB_dbi {
        var dbi: MDB_dbi = 0
        try #require(mdb_dbi_open(txn, name, flags, &dbi) == 0, "no table \(name ?? "(unnamed)")")
        return dbi
    }

    func get(_ dbi: MDB_dbi, _ key: [UInt8]) -> [UInt8]? {
        var key = key
        return key.withUnsafeMutableBytes { raw in
            var k = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
            var v = MDB_val()
            guard mdb_get(txn, dbi, &k, &v) == 0 else { return nil }
            return Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
        }
    }

    func put(_ dbi: MDB_dbi, _ key: [UInt8], _ value: [UInt8]) throws {
        var key = key
        var value = value
        try key.withUnsafeMutableBytes { k in
            try value.withUnsafeMutableBytes { v in
                var kv = MDB_val(mv_size: k.count, mv_data: k.baseAddress)
                var vv = MDB_val(mv_size: v.count, mv_data: v.baseAddress)
                try #require(mdb_put(txn, dbi, &kv, &vv, 0) == 0)
            }
        }
    }

    func delete(_ dbi: MDB_dbi, _ key: [UInt8]) throws {
        var key = key
        try key.withUnsafeMutableBytes { k in
            var kv = MDB_val(mv_size: k.count, mv_data: k.baseAddress)
            try #require(mdb_del(txn, dbi, &kv, nil) == 0)
        }
    }
}
