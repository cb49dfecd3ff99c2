import LMDBStorage
import ArgumentParser
import Foundation
import SessionLedger

@main
struct CustodyAudit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custody-audit",
        abstract: "Questions a Custody session ledger. Opens it read-only; safe while custody runs.",
        discussion: """
            Every subcommand replays the log itself and checks the format, numbering and hash \
            chain of each record it reads; a damaged ledger gets an error, never an answer. \
            Times are ISO-8601 UTC, in (2026-11-25T09:00:00Z, fractions allowed) and out \
            (microseconds). Exit status: 0 answered, 1 failed verify or bad input.
            """,
        subcommands: [History.self, Owner.self, Sessions.self, Verify.self, Export.self, Stats.self, Routes.self]
    )
}

/// The ledger to question. Every subcommand has it.
struct LedgerOptions: ParsableArguments {
    @Option(
        name: .customLong("data-dir"),
        help: "Ledger directory (opened read-only, never changed); default ./data. Repeatable: the ledgers of a cluster's nodes (directories or mdb_copy backups), answered from one history merged by epoch, each event naming its node.")
    var dataDirs: [String] = []

    @Option(help: "Where the archive's segments are (default: DATA-DIR/archive); segments copied off the machine are read from there.")
    var archive: String?

    /// The one ledger (the first, when several are given).
    var dataDir: String { dataDirs.first ?? "./data" }

    func validate() throws {
        if isMerged, archive != nil {
            throw ValidationError("--archive names one ledger's archive: with several --data-dir each is read from DATA-DIR/archive")
        }
    }

    /// The archive directory: `--archive`, or `archive` under the ledger's directory.
    var archiveDirectory: String { archive ?? (dataDir as NSString).appendingPathComponent("archive") }
}

/// Archive segments read during this run: the folds keep pointers into their records, so
/// they stay loaded until the process ends (it is short-lived).
final class KeptSegments: @unchecked Sendable {
    private let lock = NSLock()
    private var segments: [LoadedSegment] = []
    func keep(_ segment: LoadedSegment) {
        lock.lock()
        segments.append(segment)
        lock.unlock()
    }
}

let keptSegments = KeptSegments()

/// A problem with what the user asked or with the ledger: one line on stderr, exit 1.
struct AuditError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

/// Prints a one-line error naming the problem and returns the exit code to throw.
func fail(_ message: String) -> ExitCode {
    let oneLine = message.split(whereSeparator: \.isNewline).joined(separator: " ")
    FileHandle.standardError.write(Data("custody-audit: \(oneLine)\n".utf8))
    return ExitCode.failure
}

/// Runs a subcommand's work, turning every failure into the one-line error and exit 1.
func audit(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch let error as AuditError {
        throw fail(error.message)
    } catch {
        throw fail("\(error)")
    }
}

extension LedgerOptions {
    /// Opens the ledger read-only and runs `body` in one consistent snapshot of it.
    func read<R>(_ body: (LedgerStore, LedgerSnapshot) throws -> R) throws -> R {
        try Self.read(dataDir, body)
    }

    func openStore() throws -> LedgerStore { try Self.openStore(dataDir) }

    /// `read` of the ledger in `dataDir` (one node's, with several --data-dir).
    static func read<R>(_ dataDir: String, _ body: (LedgerStore, LedgerSnapshot) throws -> R) throws -> R {
        let store = try openStore(dataDir)
        defer { store.close() }
        return try store.read { try body(store, $0) }
    }

    static func openStore(_ dataDir: String) throws -> LedgerStore {
        // LMDB creates lock.mdb wherever it opens an environment, even read-only; look
        // before opening, so that a wrong directory is refused without leaving one there.
        let dataFile = dataDir + "/data.mdb"
        if let file = FileHandle(forReadingAtPath: dataFile) {
            let start = (try? file.read(upToCount: 24)) ?? Data()
            try? file.close()
            let lmdbMagic: UInt32 = 0xBEEF_C0DE
            let magic = start.count == 24 ? start.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt32.self) } : 0
            guard magic == lmdbMagic else {
                throw AuditError("cannot open the ledger: \(dataDir) is not a Custody ledger: its data.mdb is not an LMDB file")
            }
        }
        do {
            return try LedgerStore(directory: dataDir, options: LedgerStoreOptions(readOnly: true))
        } catch {
            throw AuditError("cannot open the ledger: \(error)")
        }
    }
}

/// "Now", for defaults and to refuse times in the future.
func currentTime() -> Int64 { wallClockMicroseconds() }

/// Parses a user's ISO-8601 UTC time; times after now are refused (nothing is known of them).
func parseTime(_ text: String, flag: String, now: Int64) throws -> Int64 {
    guard let time = ISO8601Time.parse(text) else {
        throw AuditError(
            "\(flag) '\(text)' is not an ISO-8601 UTC time such as 2026-11-25T09:00:00Z or 2026-11-25T09:00:00.123456Z")
    }
    guard time <= now else {
        throw AuditError("\(flag) \(text) is in the future (now is \(ISO8601Time.format(now)))")
    }
    return time
}

extension ScanOutcome {
    /// Nothing is answered from a log that fails its checks.
    func requireIntact() throws {
        if let problem {
            throw AuditError("the ledger is damaged, no answer given: \(problem) (custody-audit verify checks it)")
        }
    }
}

/// UTF-8 bytes kept at a stable address for the life of the value, to compare with
/// names in records.
final class PinnedBytes {
    let key: ByteKey
    private let storage: UnsafeMutableRawBufferPointer

    init(_ text: String) {
        let utf8 = Array(text.utf8)
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(utf8.count, 1), alignment: 1)
        storage.copyBytes(from: utf8)
        key = ByteKey(UnsafeRawPointer(storage.baseAddress), utf8.count)
    }

    deinit { storage.deallocate() }
}

/// Whether a record's authentication name is a given client's: case-insensitive, the
/// library's `AuthenticationName ==`, with an ASCII short cut.
struct ClientMatcher {
    let target: AuthenticationName
    private let asciiKey: [UInt8]?

    init(_ name: String) {
        target = AuthenticationName(unchecked: name)
        let key = Array(target.key.utf8)
        asciiKey = key.allSatisfy { $0 < 0x80 } ? key : nil
    }

    func matches(_ name: ByteKey) -> Bool {
        if let asciiKey, name.isASCII {
            guard name.count == asciiKey.count else { return false }
            for (i, byte) in name.buffer.enumerated() {
                let lowered = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte + 32 : byte
                if lowered != asciiKey[i] { return false }
            }
            return true
        }
        return AuthenticationName(unchecked: name.string) == target
    }
}
