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
        try lmdb.lmdb.withReadTransaction { txn in try body(LedgerSnapshot(txn: txn, lmdb: lmdb)) }
    }

    /// How full the map is now.
    public func mapUsage() throws -> MapUsage { try lmdb.usage() }

    /// The map's size now, and the most it may grow to.
    public var mapSize: Int { lmdb.lmdb.mapSize }
    public var maximumMapSize: Int { lmdb.lmdb.maximumMapSize }

    /// Size of the data file in bytes.
    public var dataFileSize: Int { lmdb.dataFileSize }

    /// Closes the environment. No read or write may be in progress or follow.
    public func close() { lmdb.close() }

    /// Runs one write transaction; commits (and so fsyncs) when `body` returns,
    /// aborts when it throws. When the map is full it grows the map (up to its maximum) and
    /// runs `body` again from the start, in a new transaction: `body` must not keep anything
    /// of an attempt that failed. Callers must be the writer thread or run before it starts.
    func write<R>(
        head: LedgerHead, highestConnection: UInt64, timestamp: Int64,
        _ body: (inout LedgerWriteTransaction) throws(LedgerError) -> R
    ) throws(LedgerError) -> (R, LedgerWriteTransaction) {
        while true {
            do throws(LedgerError) {
                return try writeOnce(head: head, highestConnection: highestConnection, timestamp: timestamp, body)
            } catch {
                guard error.isMapFull, try lmdb.lmdb.grow() else { throw error }
                onGrow?(lmdb.lmdb.mapSize)
            }
        }
    }

    /// Observes each growth of the map, with its new size (writer thread). Set before writing.
    public var onGrow: (@Sendable (Int) -> Void)?

    private func writeOnce<R>(
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
            try w.loadMeta()
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
