import CLMDB
import Dispatch
import Foundation
import LedgerCore
import Synchronization

/// The tables of the broker's own LMDB environment (in its own directory, apart from the
/// ledger's, so neither writer ever waits for the other):
///
/// - `messages`: message key -> message bytes. One copy of a PUBLISH however many
///   persistent sessions hold it; the broker deletes it when the last one lets go.
/// - `sessions`: session-scoped entries, key = session name bytes, 0x00, a kind byte, then
///   the kind's own suffix. Session names never hold U+0000 (they are validated), so the
///   0x00 separator makes every session's entries one contiguous key range, and ending a
///   session is one range delete.
/// - `retained`: topic name bytes -> the retained message of that topic.
/// - `routes`: the routes' outboxes: route name bytes, 0x00, the event's number (8 bytes, big
///   endian) -> the event (Routing's format). Each route's events are one key range, in order.
/// - `meta`: "format".
///
/// The store knows nothing of MQTT: the broker encodes and decodes the values.
public enum BrokerTable: UInt8, Sendable {
    case messages = 0
    case sessions = 1
    case retained = 2
    case routes = 3
}

/// One change in a broker write transaction.
public enum BrokerStoreOperation: Sendable {
    case put(BrokerTable, key: [UInt8], value: [UInt8])
    /// Deleting a key that is not there is not an error: the broker's deletes are idempotent.
    case delete(BrokerTable, key: [UInt8])
    /// Deletes every key that starts with `prefix`.
    case deletePrefix(BrokerTable, prefix: [UInt8])
    /// `put` with the key `prefix` + `number` (8 bytes, big endian), made when it is written:
    /// a record keyed by a number under a shared prefix (a session's deliveries, messages)
    /// costs no key array of its own.
    case putNumbered(BrokerTable, prefix: [UInt8], number: UInt64, value: [UInt8])
    /// `delete` of the key `prefix` + `number` (8 bytes, big endian).
    case deleteNumbered(BrokerTable, prefix: [UInt8], number: UInt64)
}

extension BrokerStoreOperation {
    /// Whether it may need more room (a put); deletes only free it.
    public var adds: Bool {
        switch self {
        case .put, .putNumbered: true
        case .delete, .deletePrefix, .deleteNumbered: false
        }
    }
}

/// How to open the broker store.
public struct BrokerStoreOptions: Sendable {
    /// The most the map may grow to: it starts small and grows when full, up to this.
    /// Past it, writes fail as a full store (the broker's limits' outcomes), never an exit.
    public var mapSize: Int
    /// MDB_NOMETASYNC, with answers held until the meta page is durable: one flush per
    /// commit under load (README: "Durability", as the ledger's). Off by default: the broker's
    /// QoS 1 flows wait on each commit with a window of messages in flight, so few commits
    /// follow one another at once, and each then pays the flush at once anyway; measured, the
    /// offline queue filled and drained 40% slower with it (Benchmarks/RESULTS.md).
    public var deferredMetaSync: Bool
    /// Opened only to read (`custody-audit routes`, while custody runs): writes fail.
    public var readOnly: Bool

    public init(mapSize: Int = 16 << 30, deferredMetaSync: Bool = false, readOnly: Bool = false) {
        self.mapSize = mapSize
        self.deferredMetaSync = deferredMetaSync
        self.readOnly = readOnly
    }
}

/// A commit of the broker store, as its writer saw it.
public struct BrokerCommitStatistics: Sendable {
    /// Submissions answered by this commit.
    public var requests: Int
    public var operations: Int
    public var microseconds: Int64
}

/// The persistent state of the broker's sessions: an LMDB environment and its single
/// writer thread with group commit.
///
/// Every `submit` waiting when the writer becomes free joins one write transaction and one
/// fsync; each submitter's `done` runs after that commit, on the writer thread, in
/// submission order (so a caller that submits A before B hears of A first, and A is on disk
/// whenever B is). If the commit fails, every submission in it fails. With
/// `deferredMetaSync`, as the ledger's, a commit's meta page is flushed by the next commit's
/// flush, or at once when none follows, and its submitters hear of it only then.
public final class BrokerStore: @unchecked Sendable {
    private let lmdb: LMDBEnvironment
    private let messages: MDB_dbi
    private let sessions: MDB_dbi
    private let retained: MDB_dbi
    private let routes: MDB_dbi
    public var directory: String { lmdb.path }

    static let formatVersion: UInt8 = 1

    private struct Submission {
        var operations: [BrokerStoreOperation]
        var done: (@Sendable (Result<Void, LedgerError>) -> Void)?
    }

    private var thread: GroupCommitThread<Submission>!
    /// The last commit's submissions, until its meta page is durable (writer thread).
    private var awaitingMeta: [Submission]?
    /// Observes each commit. Set before the first `submit`.
    public var onCommit: (@Sendable (BrokerCommitStatistics) -> Void)?
    /// Commits still to fail on purpose (`failNextCommits`), and with what.
    private let injectedFailures = Mutex<[LedgerError]>([])
    /// Runs on the writer thread whenever it finds nothing queued (`whenIdle`).
    private let idleHook = Mutex<Hook?>(nil)
    /// Runs after each commit's submissions were answered (`whenAnswered`).
    private let answeredHook = Mutex<Hook?>(nil)

    /// A hook in a box: a closure kept in a `Mutex` directly is reabstracted on every
    /// `withLock` (its inout access goes through generic code), and each write-back wraps it in
    /// one more thunk, so that calling it costs more every time.
    private final class Hook: Sendable {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    public init(directory: String, options: BrokerStoreOptions = BrokerStoreOptions()) throws(LedgerError) {
        lmdb = try LMDBEnvironment(
            directory: directory, mapSize: options.mapSize, readOnly: options.readOnly,
            deferredMetaSync: options.deferredMetaSync,
            tables: [
                .init(name: "messages"), .init(name: "sessions"), .init(name: "retained"), .init(name: "meta"),
                .init(name: "routes", optional: true),
            ],
            meta: "meta", formatVersion: Self.formatVersion)
        (messages, sessions, retained, routes) = (lmdb.tables[0], lmdb.tables[1], lmdb.tables[2], lmdb.tables[4])
        thread = GroupCommitThread(name: "custody-store") { [unowned self] batch in process(batch) }
        thread.beforeWaiting = { [unowned self] in
            if let hook = idleHook.withLock({ $0 }) { hook.run() }
            syncMeta()
        }
        thread.start()
    }

    private func dbi(_ table: BrokerTable) -> MDB_dbi {
        switch table {
        case .messages: messages
        case .sessions: sessions
        case .retained: retained
        case .routes: routes
        }
    }

    /// Queues `operations` for the next commit. `done` (if any) runs on the writer thread
    /// after that commit's fsync, or with the failure. After `close`, fails with `.closed`.
    public func submit(
        _ operations: [BrokerStoreOperation], done: (@Sendable (Result<Void, LedgerError>) -> Void)? = nil
    ) {
        if !thread.enqueue(Submission(operations: operations, done: done)) {
            done?(.failure(.closed))
            answered()
        }
    }

    /// Queues each of `submissions` (without answers) for the next commit, at once: one turn
    /// of the writer's queue for all of them.
    public func submit(each submissions: [[BrokerStoreOperation]]) {
        _ = thread.enqueue(contentsOf: submissions.map { Submission(operations: $0, done: nil) })
    }

    /// `submit(each:)`, only if the writer is idle (nothing queued, no commit in hand); says
    /// whether it did. For a caller that keeps writes that promise nothing back while the
    /// writer is busy, and hands them over from `whenIdle`: one commit then takes them all.
    public func submitIfIdle(_ submissions: [[BrokerStoreOperation]]) -> Bool {
        thread.enqueueIfIdle(contentsOf: submissions.map { Submission(operations: $0, done: nil) })
    }

    /// `hook` runs on the writer thread each time it finds nothing queued, before it waits
    /// (it may `submit`: the writer then goes on). It must not wait for a commit.
    public func whenIdle(_ hook: (@Sendable () -> Void)?) {
        idleHook.withLock { $0 = hook.map(Hook.init) }
    }

    /// `hook` runs after the `done` callbacks of a commit's submissions (on the writer thread,
    /// or on the caller's for a submission refused after `close`): a caller whose callbacks
    /// only note the outcome acts on all of them at once.
    public func whenAnswered(_ hook: (@Sendable () -> Void)?) {
        answeredHook.withLock { $0 = hook.map(Hook.init) }
    }

    private func answered() {
        if let hook = answeredHook.withLock({ $0 }) { hook.run() }
    }

    /// For tests of what a failed write leaves behind: the next `count` commits fail with
    /// `error` without writing anything, as a full disk would make them fail (every submission
    /// in such a commit fails). A full map (MDB_MAP_FULL) fails whichever writes need pages it
    /// no longer has; this fails exactly the ones a test names.
    public func failNextCommits(_ count: Int = 1, with error: LedgerError) {
        injectedFailures.withLock { $0 += Array(repeating: error, count: count) }
    }

    /// Queues and waits for the commit.
    public func write(_ operations: [BrokerStoreOperation]) async throws(LedgerError) {
        let result: Result<Void, LedgerError> = await withCheckedContinuation { continuation in
            submit(operations) { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    /// Every key and value of `table` in key order, from one snapshot.
    public func forEach(
        _ table: BrokerTable, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void
    ) throws {
        try lmdb.withReadTransaction { txn in
            try scanTable(txn: txn, dbi: dbi(table), first: nil) { key, value in
                try body(key, value)
                return true
            }
        }
    }

    /// The value stored under `key` in `table` (nil: none).
    public func value(_ table: BrokerTable, key: [UInt8]) throws -> [UInt8]? {
        try lmdb.withReadTransaction { txn in
            var key = key
            return try key.withUnsafeMutableBytes { raw in
                var k = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
                var v = MDB_val()
                let code = mdb_get(txn, dbi(table), &k, &v)
                if code == MDB_NOTFOUND { return nil }
                try check(code, "mdb_get")
                return Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
            }
        }
    }

    /// The number of keys in `table`.
    public func count(_ table: BrokerTable) throws(LedgerError) -> Int {
        do {
            return try lmdb.withReadTransaction { txn in
                var stat = MDB_stat()
                try check(mdb_stat(txn, dbi(table), &stat), "mdb_stat")
                return Int(stat.ms_entries)
            }
        } catch let error as LedgerError {
            throw error
        } catch {
            throw .storage(operation: "count", code: EIO, message: "\(error)")
        }
    }

    /// How full the store's map is now.
    public func mapUsage() throws -> MapUsage { try lmdb.usage() }

    /// Answers every queued submission, stops the writer and closes the environment.
    public func close() {
        if thread.stop() { lmdb.close() }
    }

    private func process(_ batch: [Submission]) {
        let started = DispatchTime.now().uptimeNanoseconds
        var operations = 0
        for submission in batch { operations += submission.operations.count }
        var result: Result<Void, LedgerError> = .success(())
        var refused: [Submission] = []
        var batch = batch
        let transactionBefore = lmdb.lastTransactionID
        let injected = operations > 0 ? injectedFailures.withLock { $0.isEmpty ? nil : $0.removeFirst() } : nil
        if let injected {
            result = .failure(injected)
        } else if operations > 0 {
            // At its maximum, in the reserve, writes that add fail as a full store; those that
            // only delete still go through, so that ending sessions and dropping messages
            // always make room.
            if let usage = try? lmdb.usage(), usage.mappedBytes >= usage.maximumBytes, usage.isInReserve {
                refused = batch.filter { $0.operations.contains(where: \.adds) }
                batch = batch.filter { !$0.operations.contains(where: \.adds) }
            }
            // A full map grows (up to its maximum) and the whole batch is written again.
            while !batch.isEmpty {
                result = commit(batch)
                guard case .failure(let error) = result, error.isMapFull else { break }
                do throws(LedgerError) {
                    guard try lmdb.grow() else { break }
                } catch {
                    result = .failure(error)
                    break
                }
            }
        }
        onCommit?(BrokerCommitStatistics(
            requests: batch.count, operations: operations,
            microseconds: Int64(DispatchTime.now().uptimeNanoseconds - started) / 1000))
        if case .success = result, lmdb.deferredMetaSync, lmdb.lastTransactionID != transactionBefore {
            // This commit's flush made the previous commit's meta page durable.
            if let earlier = awaitingMeta {
                awaitingMeta = nil
                for submission in earlier { submission.done?(.success(())) }
            }
            awaitingMeta = batch
            // Refusals are answered at once, behind this commit: it is made durable first.
            if !refused.isEmpty { syncMeta() }
        } else {
            // No commit, one that changed nothing (it flushed nothing), or a failed one (whether
            // it flushed is unknown): the previous commit is made durable and answered first,
            // so that answers keep their order.
            syncMeta()
            for submission in batch { submission.done?(result) }
        }
        for submission in refused {
            submission.done?(.failure(.storage(
                operation: "broker store write", code: LedgerError.mapFullCode,
                message: "the broker store's map is at its maximum and in its reserve; only deletes are taken")))
        }
        answered()
    }

    /// Flushes the data file (the last commit's meta page with it) and answers that commit,
    /// when one waits; if the flush fails, its submissions fail.
    private func syncMeta() {
        guard let commit = awaitingMeta else { return }
        awaitingMeta = nil
        let result: Result<Void, LedgerError>
        do throws(LedgerError) {
            try check(mdb_env_sync(lmdb.env, 1), "mdb_env_sync")
            result = .success(())
        } catch {
            result = .failure(error)
        }
        for submission in commit { submission.done?(result) }
        answered()
    }

    private func commit(_ batch: [Submission]) -> Result<Void, LedgerError> {
            do throws(LedgerError) {
                var txn: OpaquePointer?
                try check(mdb_txn_begin(lmdb.env, nil, 0, &txn), "mdb_txn_begin (write)")
                do throws(LedgerError) {
                    for submission in batch {
                        for operation in submission.operations { try apply(operation, txn!) }
                    }
                } catch {
                    mdb_txn_abort(txn)
                    throw error
                }
                try check(mdb_txn_commit(txn), "mdb_txn_commit")
                return .success(())
            } catch {
                return .failure(error)
            }
    }

    private func apply(_ operation: BrokerStoreOperation, _ txn: OpaquePointer) throws(LedgerError) {
        switch operation {
        case .put(let table, let key, let value):
            try withVal(key) { (k) throws(LedgerError) in
                try withVal(value) { (v) throws(LedgerError) in
                    try check(mdb_put(txn, dbi(table), &k, &v, 0), "mdb_put broker \(table)")
                }
            }
        case .delete(let table, let key):
            try withVal(key) { (k) throws(LedgerError) in
                let code = mdb_del(txn, dbi(table), &k, nil)
                if code == MDB_NOTFOUND { return }
                try check(code, "mdb_del broker \(table)")
            }
        case .putNumbered(let table, let prefix, let number, let value):
            try withNumberedKey(prefix, number) { (k) throws(LedgerError) in
                try withVal(value) { (v) throws(LedgerError) in
                    try check(mdb_put(txn, dbi(table), &k, &v, 0), "mdb_put broker \(table)")
                }
            }
        case .deleteNumbered(let table, let prefix, let number):
            try withNumberedKey(prefix, number) { (k) throws(LedgerError) in
                let code = mdb_del(txn, dbi(table), &k, nil)
                if code == MDB_NOTFOUND { return }
                try check(code, "mdb_del broker \(table)")
            }
        case .deletePrefix(let table, let prefix):
            var cursor: OpaquePointer?
            try check(mdb_cursor_open(txn, dbi(table), &cursor), "mdb_cursor_open")
            defer { mdb_cursor_close(cursor) }
            try withVal(prefix) { (first) throws(LedgerError) in
                var key = first
                var value = MDB_val()
                var code = mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE)
                while code == 0 {
                    guard key.bytes.starts(with: prefix) else { return }
                    try check(mdb_cursor_del(cursor, 0), "mdb_cursor_del")
                    // After a delete, MDB_NEXT yields the key that took the deleted one's place.
                    code = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)
                }
                if code != MDB_NOTFOUND { try check(code, "mdb_cursor_get") }
            }
        }
    }

    /// The key `prefix` + `number` (big endian) in a buffer on the stack, as an MDB_val.
    private func withNumberedKey(
        _ prefix: [UInt8], _ number: UInt64, _ body: (inout MDB_val) throws(LedgerError) -> Void
    ) throws(LedgerError) {
        var result: Result<Void, LedgerError> = .success(())
        withUnsafeTemporaryAllocation(byteCount: prefix.count + 8, alignment: 1) { buffer in
            prefix.withUnsafeBytes { buffer.copyMemory(from: $0) }
            buffer.storeBytes(of: number.bigEndian, toByteOffset: prefix.count, as: UInt64.self)
            var key = MDB_val(mv_size: buffer.count, mv_data: buffer.baseAddress)
            do throws(LedgerError) { try body(&key) } catch { result = .failure(error) }
        }
        try result.get()
    }
}
