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

/// The LMDB environment and the five tables of the ledger:
///
/// - `log`: sequence number (native UInt64, MDB_INTEGERKEY) -> event record
/// - `sessions`: session key -> session entry (owner and state)
/// - `clients`: client key -> live session count
/// - `deadlines`: deadline key -> empty (expiry index)
/// - `meta`: "format", "head", "connections"
///
/// This type and the ledger's transactions are the only code that calls `mdb_*`.
final class LMDBEnvironment: @unchecked Sendable {
    let env: OpaquePointer
    let log: MDB_dbi
    let sessions: MDB_dbi
    let clients: MDB_dbi
    let deadlines: MDB_dbi
    let meta: MDB_dbi
    let path: String
    let readOnly: Bool

    static let formatVersion: UInt8 = 1

    init(directory: String, options: LedgerStoreOptions) throws(LedgerError) {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if options.readOnly {
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
            try check(mdb_env_set_mapsize(env, options.mapSize), "mdb_env_set_mapsize")
            // NOTLS: read transactions are not tied to a thread, so async code may use them.
            var flags = UInt32(MDB_NOTLS)
            if options.readOnly { flags |= UInt32(MDB_RDONLY) }
            let code = mdb_env_open(env, directory, flags, 0o640)
            if code == MDB_INVALID || code == MDB_VERSION_MISMATCH {
                throw LedgerError.notALedger(path: directory, detail: String(cString: mdb_strerror(code)))
            }
            try check(code, "mdb_env_open \(directory)")
        } catch {
            mdb_env_close(env)
            throw error
        }
        self.env = env
        self.path = directory
        self.readOnly = options.readOnly

        // Tables are opened once, in one transaction, and the handles shared by all threads.
        var txn: OpaquePointer?
        var opened: [MDB_dbi] = []
        do throws(LedgerError) {
            try check(mdb_txn_begin(env, nil, options.readOnly ? UInt32(MDB_RDONLY) : 0, &txn), "mdb_txn_begin")
            let create: UInt32 = options.readOnly ? 0 : UInt32(MDB_CREATE)
            for (name, extra) in [("log", UInt32(MDB_INTEGERKEY)), ("sessions", 0), ("clients", 0), ("deadlines", 0), ("meta", 0)] {
                var dbi: MDB_dbi = 0
                let code = mdb_dbi_open(txn, name, create | extra, &dbi)
                if code == MDB_NOTFOUND {
                    throw LedgerError.notALedger(path: directory, detail: "it has no '\(name)' table")
                }
                try check(code, "mdb_dbi_open \(name)")
                opened.append(dbi)
            }
            let metaDBI = opened[4]
            var key = MDB_val(mv_size: 6, mv_data: UnsafeMutableRawPointer(mutating: ("format" as StaticString).utf8Start))
            var value = MDB_val()
            let code = mdb_get(txn, metaDBI, &key, &value)
            if code == MDB_NOTFOUND {
                guard !options.readOnly else {
                    throw LedgerError.notALedger(path: directory, detail: "it has no format marker")
                }
                var version = Self.formatVersion
                try withUnsafeMutableBytes(of: &version) { (bytes) throws(LedgerError) in
                    var v = MDB_val(mv_size: 1, mv_data: bytes.baseAddress)
                    try check(mdb_put(txn, metaDBI, &key, &v, 0), "mdb_put format")
                }
            } else {
                try check(code, "mdb_get format")
                let found = value.mv_size == 1 ? value.mv_data!.load(as: UInt8.self) : 0xFF
                guard found == Self.formatVersion else {
                    throw LedgerError.unsupportedFormat(found: found, supported: Self.formatVersion)
                }
            }
            try check(mdb_txn_commit(txn), "mdb_txn_commit (open)")
            txn = nil
        } catch {
            if let txn { mdb_txn_abort(txn) }
            mdb_env_close(env)
            throw error
        }
        (log, sessions, clients, deadlines, meta) = (opened[0], opened[1], opened[2], opened[3], opened[4])
    }

    func close() { mdb_env_close(env) }

    /// The size of the data file in bytes.
    var dataFileSize: Int {
        (try? FileManager.default.attributesOfItem(atPath: path + "/data.mdb")[.size] as? Int) ?? 0
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
