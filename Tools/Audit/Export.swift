import LMDBStorage
import ArgumentParser
import Foundation
import SessionLedger

/// `export`: the log as JSON Lines, for a SIEM or any other tool.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The log as JSON Lines, one event a line, in order; --follow keeps printing new events.",
        discussion: """
            Fields: seq, time, kind, reason, authenticationName, sessionName, connection, \
            protocolVersion, cleanStart, sessionExpiryInterval, remoteAddress, hash (see the \
            README). Each record is checked (format, numbering, and its hash-chain link to the \
            record before it) before its line is printed; a damaged record stops the export \
            with an error and exit status 1. With several --data-dir: every ledger's events \
            merged by epoch, each line with `node` and `epoch` (and without `hash`).
            """)

    @OptionGroup var ledger: LedgerOptions

    @Option(help: "First sequence number to export.")
    var from: UInt64 = 1

    @Option(help: "Last sequence number to export (default: the end of the log).")
    var to: UInt64?

    @Flag(help: "After the end of the log, keep printing events as they are committed (until --to, or until stopped).")
    var follow = false

    @Option(help: ArgumentHelp("With --follow: milliseconds between looks for new events.", visibility: .hidden))
    var pollMilliseconds: Int = 100

    func validate() throws {
        if from == 0 { throw ValidationError("--from must be at least 1") }
        if let to, to < from { throw ValidationError("--to \(to) is before --from \(from)") }
        if pollMilliseconds < 1 { throw ValidationError("--poll-milliseconds must be at least 1") }
    }

    func run() throws {
        try audit {
            if ledger.isMerged {
                guard !follow, from == 1, to == nil else {
                    throw AuditError("--from, --to and --follow number one ledger's events: with several --data-dir the whole merged history is exported")
                }
                return MergedOutput.print(try ledger.mergedHistory(), json: true)
            }
            var exporter = Exporter(next: from, to: to, archive: ledger.archiveDirectory)
            var out = OutputBuffer()
            let store = try ledger.openStore()
            defer { store.close() }
            try store.read { snapshot in
                let last = try snapshot.head().sequence
                if !follow {
                    if from > last + 1 {
                        throw AuditError("--from \(from) is past the end of the log (its last event is \(last))")
                    }
                    if let to, to > last {
                        throw AuditError("--to \(to) is past the end of the log (its last event is \(last)); --follow waits for it")
                    }
                }
                try exporter.export(snapshot, into: &out)
            }
            out.flush()
            guard follow else { return }
            restoreDefaultTermination()
            while !exporter.isDone {
                usleep(useconds_t(pollMilliseconds * 1000))
                try store.read { try exporter.export($0, into: &out) }
                out.flush()
            }
        }
    }
}

/// Where an export stands between read transactions: the next sequence number and the
/// hash it must chain to.
struct Exporter {
    var next: UInt64
    let to: UInt64?
    let archive: String?
    private var previous: ChainHash?

    init(next: UInt64, to: UInt64?, archive: String? = nil) {
        self.next = next
        self.to = to
        self.archive = archive
    }

    var isDone: Bool { to.map { next > $0 } ?? false }

    /// Prints every record from `next` on that the snapshot holds (through `to`).
    mutating func export(_ snapshot: LedgerSnapshot, into out: inout OutputBuffer) throws {
        guard !isDone else { return }
        if previous == nil {
            if next == 1 {
                previous = .genesis
            } else {
                // The first exported record is checked against the stored hash of the one before
                // (in the live log, at the archive boundary, or in a segment).
                let before = next - 1
                var found: ChainHash?? = try snapshot.withRecordBytes(at: before) { bytes in
                    guard let bytes else { return .some(nil) }
                    guard let raw = RawRecord(bytes) else { return nil }
                    return .some(raw.chainHash)
                }
                if case .some(nil) = found, let boundary = try snapshot.archiveBoundary(), before <= boundary.sequence {
                    if before == boundary.sequence {
                        found = .some(boundary.hash)
                    } else if let archive,
                              let segment = ArchiveSegment.list(archive).first(where: { $0.range.contains(before) })
                    {
                        let loaded: LoadedSegment
                        do {
                            loaded = try ArchiveSegment.load(archive + "/" + segment.name)
                        } catch {
                            throw AuditError("the archive is damaged: \(error) (custody-audit verify checks it)")
                        }
                        _ = loaded.forEachRecord(from: before) { _, bytes in
                            found = .some(EventRecordFormat.storedHash(bytes))
                            return false
                        }
                    } else {
                        throw AuditError("record \(before) is archived and no segment in \(archive ?? "-") holds it (--archive DIR)")
                    }
                }
                switch found {
                case .none:
                    throw AuditError("the ledger is damaged: record \(before) is unreadable (custody-audit verify checks it)")
                case .some(nil):
                    return  // not written yet (--follow waits)
                case .some(let hash?):
                    previous = hash
                }
            }
        }
        var damage: VerifyProblem?
        let archiveDamage = try ArchivedLog.walk(snapshot, archive: archive, from: next) { key, bytes in
            if let to, key > to { return false }
            guard key == next else {
                damage = .sequenceGap(expected: next, found: key)
                return false
            }
            switch RecordCheck.check(key, bytes, previous: previous!) {
            case .damaged(let problem):
                damage = problem
                return false
            case .intact(let head):
                previous = head.hash
            }
            guard let raw = RawRecord(bytes) else {
                damage = .unreadableRecord(sequence: key, detail: "format this custody-audit cannot read")
                return false
            }
            out.bytes = raw.isCheckpoint ? checkpointJSON(raw, into: out.bytes) : eventJSON(raw, into: out.bytes)
            out.bytes.append(UInt8(ascii: "\n"))
            out.flushIfLarge()
            next += 1
            return true
        }
        if let damage = damage ?? archiveDamage {
            out.flush()  // every line so far was checked
            throw AuditError("the ledger is damaged, export stopped: \(damage) (custody-audit verify checks it)")
        }
    }
}

/// A follower runs until it is told to stop. A parent may have started it with SIGINT and
/// SIGTERM blocked or ignored (Foundation's `Process` passes on its thread's signal mask),
/// which would make it unstoppable but by SIGKILL: give both their default action back.
func restoreDefaultTermination() {
    var set = sigset_t()
    sigemptyset(&set)
    for number in [SIGINT, SIGTERM, SIGHUP] {
        sigaddset(&set, number)
        signal(number, SIG_DFL)
    }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
