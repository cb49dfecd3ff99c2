import CLMDB
import Dispatch
import LedgerCore

/// An open ledger directory. Reads run in LMDB read transactions on any thread; all
/// writes go through the one `LedgerWriter`.
public final class LedgerStore: @unchecked Sendable {
    let lmdb: LedgerEnvironment
    public var directory: String { lmdb.path }
    public var isReadOnly: Bool { lmdb.readOnly }

    public init(directory: String, options: LedgerStoreOptions = LedgerStoreOptions()) throws(LedgerError) {
        lmdb = try LedgerEnvironment(directory: directory, options: options)
    }

    /// Runs `body` against one consistent snapshot of the ledger.
    public func read<R>(_ body: (LedgerSnapshot) throws -> R) throws -> R {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(lmdb.env, nil, UInt32(MDB_RDONLY), &txn), "mdb_txn_begin (read)")
        defer { mdb_txn_abort(txn) }
        return try body(LedgerSnapshot(txn: txn!, lmdb: lmdb))
    }

    /// Size of the data file in bytes.
    public var dataFileSize: Int { lmdb.dataFileSize }

    /// Closes the environment. No read or write may be in progress or follow.
    public func close() { lmdb.close() }

    /// Runs one write transaction; commits (and so fsyncs) when `body` returns,
    /// aborts when it throws. Callers must be the writer thread or run before it starts.
    func write<R>(
        head: LedgerHead, highestConnection: UInt64, timestamp: Int64,
        _ body: (inout LedgerWriteTransaction) throws(LedgerError) -> R
    ) throws(LedgerError) -> (R, LedgerWriteTransaction) {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(lmdb.env, nil, 0, &txn), "mdb_txn_begin (write)")
        var w = LedgerWriteTransaction(
            txn: txn!, lmdb: lmdb, head: head, highestConnection: highestConnection,
            startingConnection: highestConnection, timestamp: timestamp)
        let result: R
        do {
            result = try body(&w)
            try w.finish()
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        // mdb_txn_commit frees the transaction whatever it returns.
        let syncStart = DispatchTime.now().uptimeNanoseconds
        try check(mdb_txn_commit(txn), "mdb_txn_commit")
        w.commitNanoseconds = DispatchTime.now().uptimeNanoseconds - syncStart
        return (result, w)
    }
}
