import CLMDB
import Foundation
import LedgerCore
import Synchronization

@inline(__always)
func check(_ code: Int32, _ operation: @autoclosure () -> String) throws(LedgerError) {
    guard code == 0 else {
        throw LedgerError.storage(operation: operation(), code: code, message: String(cString: mdb_strerror(code)))
    }
}

/// How to open the ledger's LMDB environment.
public struct LedgerStoreOptions: Sendable {
    /// The largest the data file may grow: the map starts small and grows on demand
    /// (`LMDBEnvironment.grow`) up to this size, never beyond.
    public var mapSize: Int = 64 << 30
    public var readOnly = false
    /// Room kept for what must never fail for lack of pages: recovery, checkpoints and the
    /// recording of disconnects and expiries. Claims are refused (R8) once the pages in use
    /// pass `mapSize - reserve`; nil takes `MapReserve.defaultReserve(for:)`.
    public var reserve: Int?
    /// MDB_NOMETASYNC: a commit flushes its data pages only; its meta page becomes durable
    /// with the next commit's flush, or with `syncMeta()`. The ledger's writer answers a
    /// commit's requests only once its meta page is durable (README: "Durability").
    public var deferredMetaSync: Bool

    public init(mapSize: Int = 64 << 30, readOnly: Bool = false, reserve: Int? = nil, deferredMetaSync: Bool = true) {
        self.mapSize = mapSize
        self.readOnly = readOnly
        self.reserve = reserve
        self.deferredMetaSync = deferredMetaSync
    }
}

/// The part of a map kept back from claims.
public enum MapReserve {
    /// An eighth of the map, at least 128 KiB and at most 512 MiB: about 3 million
    /// disconnects at the top, and the copy-on-write pages of a few transactions at the bottom.
    public static func defaultReserve(for mapSize: Int) -> Int {
        min(max(mapSize / 8, 128 << 10), 512 << 20)
    }
}

/// How full an LMDB environment is, in bytes.
public struct MapUsage: Sendable, Equatable {
    /// Pages held by the tables and the free list's own records, times the page size.
    public var usedBytes: Int
    /// The map as it is now (it grows up to `maximumBytes`).
    public var mappedBytes: Int
    /// The most it may grow to.
    public var maximumBytes: Int
    /// Held back from claims: room for recovery, checkpoints and the copy-on-write pages
    /// of the transactions that record ends.
    public var reserveBytes: Int
    /// Held back too, for the ledger: room to record the end of every live session (a
    /// disconnect and an expiry each, at three times the log's bytes per record).
    public var endingBytes: Int
    /// The maximum asked for; below `maximumBytes` when the stored data and its reserve
    /// did not fit in it at open (the maximum was lowered).
    public var configuredMaximumBytes: Int

    public init(
        usedBytes: Int, mappedBytes: Int, maximumBytes: Int, reserveBytes: Int, endingBytes: Int = 0,
        configuredMaximumBytes: Int? = nil
    ) {
        self.usedBytes = usedBytes
        self.mappedBytes = mappedBytes
        self.maximumBytes = maximumBytes
        self.reserveBytes = reserveBytes
        self.endingBytes = endingBytes
        self.configuredMaximumBytes = configuredMaximumBytes ?? maximumBytes
    }

    /// True when the map may grow past the maximum asked for, to hold what is stored.
    public var isAboveConfiguredMaximum: Bool { maximumBytes > configuredMaximumBytes }

    /// Used over the maximum: what `custody_ledger_map_used_ratio` shows.
    public var usedRatio: Double { maximumBytes > 0 ? Double(usedBytes) / Double(maximumBytes) : 0 }

    /// Past this, claims are refused: what is left is kept for the ends of live sessions
    /// and for the reserve. Claims count against the maximum asked for, even when the map
    /// was let grow past it at open.
    public var isInReserve: Bool {
        usedBytes + endingBytes > min(maximumBytes, configuredMaximumBytes) - reserveBytes
    }
}

/// A read-write lock over `pthread_rwlock_t`, writers preferred: read transactions hold
/// it shared, a resize of the map holds it exclusively (LMDB's `mdb_env_set_mapsize` may
/// only run while no transaction of the process is open). Kept as a stored property.
final class ResizeLock: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func withShared<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func withExclusive<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}

/// One LMDB environment with its named tables and a format marker: the only way Custody
/// opens one (the ledger's and the broker's store alike). Tables are opened once, in one
/// transaction, and their handles shared by all threads.
final class LMDBEnvironment: @unchecked Sendable {
    /// A table to open: its name and `mdb_dbi_open` flags (besides MDB_CREATE).
    struct Table {
        var name: String
        var flags: UInt32 = 0
        /// Added by a later version: a read-only open of an older environment without it
        /// gets handle 0 (the free list's, never a named table's) in its place.
        var optional = false
    }

    let env: OpaquePointer
    /// The handles of the tables asked for, in the same order.
    let tables: [MDB_dbi]
    /// The unnamed database's handle: it holds the tables' names (written by LMDB in every
    /// commit that changes a table), and may hold other keys that do not name a table.
    let main: MDB_dbi
    let path: String
    let readOnly: Bool
    /// Opened with MDB_NOMETASYNC.
    let deferredMetaSync: Bool
    /// The most the map may grow to, and the part of it kept back from claims.
    let maximumMapSize: Int
    let reserve: Int
    /// The maximum asked for at open (`maximumMapSize` is larger when the data did not fit).
    let configuredMaximumMapSize: Int
    /// Shared by read transactions, exclusive while the map is resized.
    let resizeLock = ResizeLock()
    /// The map's size now; changed only by `grow` (writer thread) under the exclusive lock.
    private let mappedSize: Mutex<Int>
    /// The page size, for usage figures.
    let pageSize: Int

    /// The map a new or reopened environment starts with: room for what is stored and as
    /// much again (at least 8 MiB), never more than the maximum.
    static func initialMapSize(directory: String, maximum: Int) -> Int {
        let file = (try? FileManager.default.attributesOfItem(atPath: directory + "/data.mdb")[.size] as? Int) ?? 0
        let wanted = max(8 << 20, file * 2)
        let rounded = (wanted + (1 << 20) - 1) & ~((1 << 20) - 1)
        return min(maximum, rounded)
    }

    /// Opens (creating unless `readOnly`) the environment in `directory`. `meta` names the
    /// table holding the `format` marker, which must be `formatVersion` (written when new) or
    /// one of `olderFormats` (still read; a writable open marks it `formatVersion`, whose
    /// reader takes the older layout too). A directory that holds something else is
    /// `.notALedger`; any other format is `.unsupportedFormat`.
    init(
        directory: String, mapSize: Int, readOnly: Bool = false, reserve: Int? = nil, deferredMetaSync: Bool = false,
        tables wanted: [Table],
        meta: String, formatVersion: UInt8, olderFormats: [UInt8] = [],
        endingRoom: ((_ txn: OpaquePointer, _ tables: [MDB_dbi], _ pageSize: Int) -> Int)? = nil
    ) throws(LedgerError) {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if readOnly {
            guard fm.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw .notALedger(path: directory, detail: "no such directory")
            }
            guard fm.fileExists(atPath: directory + "/data.mdb") else {
                throw .notALedger(path: directory, detail: "no data.mdb in it")
            }
        } else {
            do {
                try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw .storage(operation: "create directory \(directory)", code: EIO, message: "\(error)")
            }
        }

        var env: OpaquePointer?
        try check(mdb_env_create(&env), "mdb_env_create")
        guard let env else { throw .storage(operation: "mdb_env_create", code: ENOMEM, message: "no environment") }
        do throws(LedgerError) {
            try check(mdb_env_set_maxdbs(env, 8), "mdb_env_set_maxdbs")
            // A read-only reader maps the maximum at once (it never grows it); a writer starts
            // small and grows. LMDB raises a map smaller than the data already stored.
            let initial = readOnly ? mapSize : Self.initialMapSize(directory: directory, maximum: mapSize)
            try check(mdb_env_set_mapsize(env, initial), "mdb_env_set_mapsize")
            // NOTLS: read transactions are not tied to a thread, so async code may use them.
            var flags = UInt32(MDB_NOTLS)
            if readOnly { flags |= UInt32(MDB_RDONLY) }
            if deferredMetaSync && !readOnly { flags |= UInt32(MDB_NOMETASYNC) }
            let code = mdb_env_open(env, directory, flags, 0o640)
            if code == MDB_INVALID || code == MDB_VERSION_MISMATCH {
                throw LedgerError.notALedger(path: directory, detail: String(cString: mdb_strerror(code)))
            }
            try check(code, "mdb_env_open \(directory)")
        } catch {
            mdb_env_close(env)
            throw error
        }

        var txn: OpaquePointer?
        var opened: [MDB_dbi] = []
        var mainDBI: MDB_dbi = 0
        do throws(LedgerError) {
            try check(mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn), "mdb_txn_begin")
            let create: UInt32 = readOnly ? 0 : UInt32(MDB_CREATE)
            for table in wanted {
                var dbi: MDB_dbi = 0
                let code = mdb_dbi_open(txn, table.name, create | table.flags, &dbi)
                if code == MDB_NOTFOUND && readOnly && table.optional {
                    opened.append(0)
                    continue
                }
                if code == MDB_NOTFOUND {
                    throw LedgerError.notALedger(path: directory, detail: "it has no '\(table.name)' table")
                }
                try check(code, "mdb_dbi_open \(table.name)")
                opened.append(dbi)
            }
            try check(mdb_dbi_open(txn, nil, 0, &mainDBI), "mdb_dbi_open (unnamed)")
            guard let metaIndex = wanted.firstIndex(where: { $0.name == meta }) else {
                preconditionFailure("the format marker's table \(meta) is not among the tables")
            }
            let metaDBI = opened[metaIndex]
            var key = MDB_val(mv_size: 6, mv_data: UnsafeMutableRawPointer(mutating: ("format" as StaticString).utf8Start))
            var value = MDB_val()
            let code = mdb_get(txn, metaDBI, &key, &value)
            var marks = false
            if code == MDB_NOTFOUND {
                guard !readOnly else {
                    throw LedgerError.notALedger(path: directory, detail: "it has no format marker")
                }
                marks = true
            } else {
                try check(code, "mdb_get format")
                let found = value.mv_size == 1 ? value.mv_data!.load(as: UInt8.self) : 0xFF
                guard found == formatVersion || olderFormats.contains(found) else {
                    throw LedgerError.unsupportedFormat(found: found, supported: formatVersion)
                }
                marks = found != formatVersion && !readOnly
            }
            if marks {
                var version = formatVersion
                try withUnsafeMutableBytes(of: &version) { (bytes) throws(LedgerError) in
                    var v = MDB_val(mv_size: 1, mv_data: bytes.baseAddress)
                    try check(mdb_put(txn, metaDBI, &key, &v, 0), "mdb_put format")
                }
            }
            try check(mdb_txn_commit(txn), "mdb_txn_commit (open)")
            txn = nil
        } catch {
            if let txn { mdb_txn_abort(txn) }
            mdb_env_close(env)
            throw error
        }
        self.env = env
        self.tables = opened
        self.main = mainDBI
        self.path = directory
        self.readOnly = readOnly
        self.deferredMetaSync = deferredMetaSync && !readOnly
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        var stat = MDB_stat()
        mdb_env_stat(env, &stat)
        self.pageSize = Int(stat.ms_psize)
        // A file already larger than the maximum (the maximum was lowered) keeps its size as
        // the maximum. When what is stored, with the room `endingRoom` names and a reserve,
        // does not fit below that (the maximum was lowered, or the reserve went on ends), the
        // map may grow past the maximum to hold them, so that recovery, checkpoints,
        // disconnects and expiries always find pages; claims stay bounded by the maximum
        // asked for (`MapUsage.isInReserve`), until archiving makes room. Never an exit for
        // want of room at open.
        let wantedReserve = reserve ?? MapReserve.defaultReserve(for: mapSize)
        var maximum = max(mapSize, info.me_mapsize)
        if !readOnly {
            var txn: OpaquePointer?
            if mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn) == 0, let txn {
                let used = Self.usedPages(txn: txn, tables: opened) * Int(stat.ms_psize)
                let needed = used + (endingRoom?(txn, opened, Int(stat.ms_psize)) ?? 0) + wantedReserve
                mdb_txn_abort(txn)
                if needed > maximum { maximum = (needed + (1 << 20) - 1) & ~((1 << 20) - 1) }
            }
        }
        self.maximumMapSize = maximum
        self.configuredMaximumMapSize = mapSize
        self.reserve = min(reserve ?? MapReserve.defaultReserve(for: maximum), maximum / 2)
        self.mappedSize = Mutex(info.me_mapsize)
    }

    func close() { mdb_env_close(env) }

    var mapSize: Int { mappedSize.withLock { $0 } }

    /// Begins a read transaction holding the resize lock shared for as long as it runs
    /// and ends both when `body` returns. Adopts a map another process has grown (MDB_MAP_RESIZED).
    func withReadTransaction<R>(_ body: (OpaquePointer) throws -> R) throws -> R {
        for attempt in 0..<2 {
            let outcome: R? = try resizeLock.withShared { () throws -> R? in
                var txn: OpaquePointer?
                let code = mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn)
                if code == MDB_MAP_RESIZED && attempt == 0 { return nil }
                try check(code, "mdb_txn_begin (read)")
                defer { mdb_txn_abort(txn) }
                return try body(txn!)
            }
            if let outcome { return outcome }
            try resizeLock.withExclusive { () throws(LedgerError) in
                try check(mdb_env_set_mapsize(env, 0), "mdb_env_set_mapsize (adopt)")
            }
        }
        preconditionFailure("unreachable")
    }

    /// Grows the map after MDB_MAP_FULL: doubles it (by at least 8 MiB), up to the maximum.
    /// Only the writer thread calls it, with no transaction of its own open; it waits for
    /// the read transactions to end. False when the map is at its maximum already.
    func grow() throws(LedgerError) -> Bool {
        try resizeLock.withExclusive { () throws(LedgerError) -> Bool in
            let current = mappedSize.withLock { $0 }
            guard current < maximumMapSize else { return false }
            let wanted = min(maximumMapSize, max(current * 2, current + (8 << 20)))
            try check(mdb_env_set_mapsize(env, wanted), "mdb_env_set_mapsize")
            var info = MDB_envinfo()
            mdb_env_info(env, &info)
            mappedSize.withLock { $0 = info.me_mapsize }
            return true
        }
    }

    /// Pages in use, from the tables' own statistics (no scan): every page of every table,
    /// of the table of tables and of the free list's records. Pages on the free list are
    /// not counted: LMDB reuses them before it extends the file.
    func usage(txn: OpaquePointer) -> MapUsage {
        MapUsage(
            usedBytes: Self.usedPages(txn: txn, tables: tables) * pageSize, mappedBytes: mapSize,
            maximumBytes: maximumMapSize, reserveBytes: reserve, configuredMaximumBytes: configuredMaximumMapSize)
    }

    static func usedPages(txn: OpaquePointer, tables: [MDB_dbi]) -> Int {
        var pages = 2  // the two meta pages
        for dbi in [0, 1] + tables.filter({ $0 > 1 }) {  // 0: the free list, 1: the table of tables
            var stat = MDB_stat()
            if mdb_stat(txn, dbi, &stat) == 0 {
                pages += Int(stat.ms_branch_pages + stat.ms_leaf_pages + stat.ms_overflow_pages)
            }
        }
        return pages
    }


    /// Usage from a read transaction of its own.
    func usage() throws -> MapUsage {
        try withReadTransaction { usage(txn: $0) }
    }

    /// The size of the data file in bytes.
    var dataFileSize: Int {
        (try? FileManager.default.attributesOfItem(atPath: path + "/data.mdb")[.size] as? Int) ?? 0
    }

    /// The last committed transaction's id: a commit that changed nothing writes no meta
    /// page, flushes nothing and leaves it as it was (writer thread, for the deferred meta sync).
    var lastTransactionID: Int {
        var info = MDB_envinfo()
        mdb_env_info(env, &info)
        return info.me_last_txnid
    }
}

/// The ledger's environment and its five tables:
///
/// - `log`: sequence number (native UInt64, MDB_INTEGERKEY) -> event record
/// - `sessions`: session key -> session entry (owner and state)
/// - `clients`: client key -> live session count
/// - `deadlines`: deadline key -> empty (expiry index)
/// - `meta`: "format", "head", "connections", "digest", "checkpoint", "archived", "prior"
/// - `prior`: session key -> the session's entry as the newest checkpoint describes it
///   (1, then the stored entry) or its absence there (0), written the first time the session
///   changes after that checkpoint and emptied by the next: with the stored projection it
///   gives the projection at the checkpoint, from which `verify` starts
final class LedgerEnvironment: @unchecked Sendable {
    /// 2: the keys every commit changes moved to the unnamed database (`MetaKey.everyCommit`);
    /// a format 1 ledger is read as it is and marked 2 by a writable open (its keys move with
    /// its next commit). A binary that knows only format 1 refuses it, rather than finding no head.
    static let formatVersion: UInt8 = 2

    let lmdb: LMDBEnvironment
    let log: MDB_dbi
    let sessions: MDB_dbi
    let clients: MDB_dbi
    let deadlines: MDB_dbi
    let meta: MDB_dbi
    /// 0 in a read-only open of a ledger written before the table existed.
    let prior: MDB_dbi
    /// Where the keys every commit changes live (`MetaKey.everyCommit`).
    var main: MDB_dbi { lmdb.main }

    var env: OpaquePointer { lmdb.env }
    var path: String { lmdb.path }
    var readOnly: Bool { lmdb.readOnly }
    var dataFileSize: Int { lmdb.dataFileSize }

    init(directory: String, options: LedgerStoreOptions) throws(LedgerError) {
        lmdb = try LMDBEnvironment(
            directory: directory, mapSize: options.mapSize, readOnly: options.readOnly, reserve: options.reserve,
            deferredMetaSync: options.deferredMetaSync,
            tables: [
                .init(name: "log", flags: UInt32(MDB_INTEGERKEY)), .init(name: "sessions"), .init(name: "clients"),
                .init(name: "deadlines"), .init(name: "meta"), .init(name: "prior", optional: true),
            ],
            meta: "meta", formatVersion: Self.formatVersion, olderFormats: [1],
            endingRoom: { txn, tables, pageSize in Self.endingBytes(txn: txn, log: tables[0], sessions: tables[1], pageSize: pageSize) })
        (log, sessions, clients, deadlines, meta, prior) =
            (lmdb.tables[0], lmdb.tables[1], lmdb.tables[2], lmdb.tables[3], lmdb.tables[4], lmdb.tables[5])
        let metaDBI = meta
        everyCommitKeysInMeta = (try? lmdb.withReadTransaction { txn in
            [MetaKey.head, MetaKey.connections, MetaKey.digest].contains { key in
                var key = key
                return key.withUnsafeMutableBytes { raw in
                    var k = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
                    var v = MDB_val()
                    return mdb_get(txn, metaDBI, &k, &v) == 0
                }
            }
        }) ?? true
    }

    /// Whether `meta` held a key that every commit changes when the ledger was opened (a
    /// ledger of the earlier layout): commits then delete the old copies as they write the
    /// keys where they live now. A ledger without them pays no lookup for it.
    let everyCommitKeysInMeta: Bool

    func close() { lmdb.close() }

    /// Whether commits leave their meta page to the next flush (MDB_NOMETASYNC).
    var deferredMetaSync: Bool { !readOnly && lmdb.deferredMetaSync }

    /// Flushes the data file now (`mdb_env_sync`, forced): the last commit's meta page with it.
    func syncMeta() throws(LedgerError) {
        try check(mdb_env_sync(env, 1), "mdb_env_sync")
    }

    /// The map's usage with room for the end of every live session: each live session may
    /// still need a disconnect and an expiry record and a deadline key, counted as three
    /// times the log's stored bytes per record (leaf slack included).
    func usage(txn: OpaquePointer) -> MapUsage {
        var usage = lmdb.usage(txn: txn)
        usage.endingBytes = Self.endingBytes(txn: txn, log: log, sessions: sessions, pageSize: lmdb.pageSize)
        return usage
    }

    static func endingBytes(txn: OpaquePointer, log: MDB_dbi, sessions: MDB_dbi, pageSize: Int) -> Int {
        var sessionStat = MDB_stat()
        var logStat = MDB_stat()
        guard mdb_stat(txn, sessions, &sessionStat) == 0, mdb_stat(txn, log, &logStat) == 0 else { return 0 }
        let logBytes = Int(logStat.ms_leaf_pages + logStat.ms_overflow_pages) * pageSize
        let perRecord = logStat.ms_entries > 0 ? max(64, logBytes / Int(logStat.ms_entries)) : 256
        return Int(sessionStat.ms_entries) * 3 * perRecord
    }

    func usage() throws -> MapUsage {
        try lmdb.withReadTransaction { usage(txn: $0) }
    }
}

// MARK: - Small helpers over MDB_val

@inline(__always)
func withVal<R>(_ bytes: [UInt8], _ body: (inout MDB_val) throws(LedgerError) -> R) throws(LedgerError) -> R {
    var result: Result<R, LedgerError>!
    bytes.withUnsafeBytes { raw in
        var val = MDB_val(mv_size: raw.count, mv_data: UnsafeMutableRawPointer(mutating: raw.baseAddress))
        do throws(LedgerError) { result = .success(try body(&val)) } catch { result = .failure(error) }
    }
    return try result.get()
}

extension MDB_val {
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: mv_data, count: mv_size) }
}

enum MetaKey {
    /// The keys every commit changes (`head`, and `digest` and `connections` with most) are
    /// kept in the unnamed database, as `0x00 ‖ name`, rather than in `meta`: LMDB writes that
    /// database's page in every commit anyway (it holds the tables' roots), so the commit
    /// writes one page fewer. A ledger written before keeps them in `meta`, where they are
    /// read until the first commit moves them (`LedgerWriteTransaction.putMeta`, while
    /// `LedgerEnvironment.everyCommitKeysInMeta`).
    static func everyCommit(_ key: [UInt8]) -> [UInt8]? {
        key == head || key == connections || key == digest ? [0] + key : nil
    }

    static let head: [UInt8] = Array("head".utf8)
    static let connections: [UInt8] = Array("connections".utf8)
    /// The projection's running digest (32 bytes, `ProjectionDigest`).
    static let digest: [UInt8] = Array("digest".utf8)
    /// The newest checkpoint record's sequence number (UInt64 little-endian).
    static let checkpoint: [UInt8] = Array("checkpoint".utf8)
    /// The archive boundary (`ArchiveBoundary`): the last archived sequence, its time and hash.
    static let archived: [UInt8] = Array("archived".utf8)
    /// The checkpoint whose entries the `prior` table holds (UInt64 little-endian); absent
    /// or older than the newest checkpoint when the table cannot rebuild it.
    static let prior: [UInt8] = Array("prior".utf8)
}

extension LedgerHead {
    static let encodedSize = 48

    func encode(into buffer: UnsafeMutableRawBufferPointer) {
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: timestamp.littleEndian, toByteOffset: 8, as: Int64.self)
        hash.withBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[16..<48]).copyMemory(from: $0) }
    }

    static func decode(_ bytes: UnsafeRawBufferPointer) throws(LedgerError) -> LedgerHead {
        guard bytes.count == encodedSize else {
            throw .corruptRecord(table: "meta", detail: "head is \(bytes.count) bytes, expected \(encodedSize)")
        }
        return LedgerHead(
            sequence: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
            timestamp: Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: Int64.self)),
            hash: ChainHash(bytes: UnsafeRawBufferPointer(rebasing: bytes[16..<48])))
    }
}
