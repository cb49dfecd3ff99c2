import CLMDB
import Foundation
import LedgerCore

@inline(__always)
func check(_ code: Int32, _ operation: @autoclosure () -> String) throws(LedgerError) {
    guard code == 0 else {
        throw LedgerError.storage(operation: operation(), code: code, message: String(cString: mdb_strerror(code)))
    }
}

/// How to open the ledger's LMDB environment.
public struct LedgerStoreOptions: Sendable {
    /// The largest the data file may grow. LMDB maps it whole; on 64-bit systems
    /// address space is cheap and the file only grows as it fills.
    public var mapSize: Int = 64 << 30
    public var readOnly = false

    public init(mapSize: Int = 64 << 30, readOnly: Bool = false) {
        self.mapSize = mapSize
        self.readOnly = readOnly
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
    }

    let env: OpaquePointer
    /// The handles of the tables asked for, in the same order.
    let tables: [MDB_dbi]
    let path: String
    let readOnly: Bool

    /// Opens (creating unless `readOnly`) the environment in `directory`. `meta` names the
    /// table holding the `format` marker, which must be `formatVersion` (written when new).
    /// A directory that holds something else is `.notALedger`; a newer format is
    /// `.unsupportedFormat`.
    init(
        directory: String, mapSize: Int, readOnly: Bool = false, tables wanted: [Table], meta: String,
        formatVersion: UInt8
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
            try check(mdb_env_set_mapsize(env, mapSize), "mdb_env_set_mapsize")
            // NOTLS: read transactions are not tied to a thread, so async code may use them.
            var flags = UInt32(MDB_NOTLS)
            if readOnly { flags |= UInt32(MDB_RDONLY) }
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
        do throws(LedgerError) {
            try check(mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn), "mdb_txn_begin")
            let create: UInt32 = readOnly ? 0 : UInt32(MDB_CREATE)
            for table in wanted {
                var dbi: MDB_dbi = 0
                let code = mdb_dbi_open(txn, table.name, create | table.flags, &dbi)
                if code == MDB_NOTFOUND {
                    throw LedgerError.notALedger(path: directory, detail: "it has no '\(table.name)' table")
                }
                try check(code, "mdb_dbi_open \(table.name)")
                opened.append(dbi)
            }
            guard let metaIndex = wanted.firstIndex(where: { $0.name == meta }) else {
                preconditionFailure("the format marker's table \(meta) is not among the tables")
            }
            let metaDBI = opened[metaIndex]
            var key = MDB_val(mv_size: 6, mv_data: UnsafeMutableRawPointer(mutating: ("format" as StaticString).utf8Start))
            var value = MDB_val()
            let code = mdb_get(txn, metaDBI, &key, &value)
            if code == MDB_NOTFOUND {
                guard !readOnly else {
                    throw LedgerError.notALedger(path: directory, detail: "it has no format marker")
                }
                var version = formatVersion
                try withUnsafeMutableBytes(of: &version) { (bytes) throws(LedgerError) in
                    var v = MDB_val(mv_size: 1, mv_data: bytes.baseAddress)
                    try check(mdb_put(txn, metaDBI, &key, &v, 0), "mdb_put format")
                }
            } else {
                try check(code, "mdb_get format")
                let found = value.mv_size == 1 ? value.mv_data!.load(as: UInt8.self) : 0xFF
                guard found == formatVersion else {
                    throw LedgerError.unsupportedFormat(found: found, supported: formatVersion)
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
        self.path = directory
        self.readOnly = readOnly
    }

    func close() { mdb_env_close(env) }

    /// The size of the data file in bytes.
    var dataFileSize: Int {
        (try? FileManager.default.attributesOfItem(atPath: path + "/data.mdb")[.size] as? Int) ?? 0
    }
}

/// The ledger's environment and its five tables:
///
/// - `log`: sequence number (native UInt64, MDB_INTEGERKEY) -> event record
/// - `sessions`: session key -> session entry (owner and state)
/// - `clients`: client key -> live session count
/// - `deadlines`: deadline key -> empty (expiry index)
/// - `meta`: "format", "head", "connections"
final class LedgerEnvironment: @unchecked Sendable {
    static let formatVersion: UInt8 = 1

    let lmdb: LMDBEnvironment
    let log: MDB_dbi
    let sessions: MDB_dbi
    let clients: MDB_dbi
    let deadlines: MDB_dbi
    let meta: MDB_dbi

    var env: OpaquePointer { lmdb.env }
    var path: String { lmdb.path }
    var readOnly: Bool { lmdb.readOnly }
    var dataFileSize: Int { lmdb.dataFileSize }

    init(directory: String, options: LedgerStoreOptions) throws(LedgerError) {
        lmdb = try LMDBEnvironment(
            directory: directory, mapSize: options.mapSize, readOnly: options.readOnly,
            tables: [
                .init(name: "log", flags: UInt32(MDB_INTEGERKEY)), .init(name: "sessions"), .init(name: "clients"),
                .init(name: "deadlines"), .init(name: "meta"),
            ],
            meta: "meta", formatVersion: Self.formatVersion)
        (log, sessions, clients, deadlines, meta) =
            (lmdb.tables[0], lmdb.tables[1], lmdb.tables[2], lmdb.tables[3], lmdb.tables[4])
    }

    func close() { lmdb.close() }
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
    static let head: [UInt8] = Array("head".utf8)
    static let connections: [UInt8] = Array("connections".utf8)
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
