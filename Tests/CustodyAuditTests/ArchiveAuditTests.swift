import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Testing

/// A ledger of `cycles` connect/disconnect cycles (two events each) spread evenly over
/// `days` days before `end`, a checkpoint every `every` records, then archived with
/// `retentionDays`; session `s-K` is cycled every `sessions` cycles. Built by
/// `custody-bench ledger-archive-fixture` (the writer's bulk load, not MQTT), in a child
/// process at a low priority.
struct ArchivedLedger {
    var head: UInt64
    var hash: String
    var archiveDirectory: String
    var segments: [(name: String, range: ClosedRange<UInt64>)]
    var liveFirst: UInt64

    static let day: Int64 = 86_400 * 1_000_000

    static func make(
        _ directory: String, cycles: Int, days: Int, every: UInt64, retentionDays: Int64, sessions: Int = 1000,
        end: Int64? = nil, timeout: Double = 120
    ) throws -> ArchivedLedger {
        var arguments = [
            "ledger-archive-fixture", "--data-dir", directory, "--cycles", "\(cycles)", "--days", "\(days)",
            "--checkpoint-every", "\(every)", "--retention-days", "\(retentionDays)", "--sessions", "\(sessions)",
        ]
        if let end { arguments += ["--end", "\(end)"] }
        let printed = try runLowPriority(try builtProduct("custody-bench").path, arguments, timeout: timeout)
        // fixture: head=N hash=H live_first=F segments=S
        let fields = Dictionary(uniqueKeysWithValues: printed.split(whereSeparator: \.isWhitespace).compactMap { part -> (String, String)? in
            let pair = part.split(separator: "=", maxSplits: 1)
            return pair.count == 2 ? (String(pair[0]), String(pair[1])) : nil
        })
        guard let head = fields["head"].flatMap({ UInt64($0) }), let hash = fields["hash"],
            let liveFirst = fields["live_first"].flatMap({ UInt64($0) })
        else { throw TestFailure.unexpected("ledger-archive-fixture printed: \(printed)") }
        let archiveDirectory = directory + "/archive"
        return ArchivedLedger(
            head: head, hash: hash, archiveDirectory: archiveDirectory, segments: ArchiveSegment.list(archiveDirectory),
            liveFirst: liveFirst)
    }
}

@Suite("custody-audit across the archive")
struct ArchiveAuditTests {
    @Test("A million events, half archived by the retention at checkpoints: segments and live log verify as one")
    func millionEvents() async throws {
        try await offPool { try Self.millionEventsBody() }
    }

    static func millionEventsBody() throws {
        // Built and questioned by child processes at nice 19, on a tmpfs where there is one: a
        // million events through a debug build take the CPU for a while, and 200 MB of writes
        // would hold up the fsyncs of the tests beside it (ext4 commits them together).
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let directory = base + "/custody-audit-1m-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ledger = try ArchivedLedger.make(
            directory, cycles: 500_000, days: 60, every: 50_000, retentionDays: 30, timeout: 600)
        let (head, liveFirst) = (ledger.head, ledger.liveFirst)
        let segments = ledger.segments
        // 1,000,000 events and a checkpoint every 50,000 records.
        #expect(head == 1_000_000 + 1_000_000 / 50_000 - 1 || head == 1_000_000 + 1_000_000 / 50_000)
        // The retention cut the log about in half, at checkpoints.
        #expect(segments.count >= 9 && segments.count <= 11, "\(segments.map(\.name))")
        #expect(liveFirst > 450_000 && liveFirst < 560_000, "\(liveFirst)")
        #expect(segments.last!.range.upperBound + 1 == liveFirst)

        // From the newest checkpoint (the default), and every record of every segment (--full).
        let newest = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true)).readAndClose { try $0.lastCheckpoint() }
        #expect(newest > head - 50_000)
        let verify = try runAuditBlocking(["verify", "--data-dir", directory], timeout: 600, lowPriority: true)
        #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
        #expect(verify.stdout == "verify: ok events=\(head) head=\(ledger.hash) from_checkpoint=\(newest)\n")
        let full = try runAuditBlocking(["verify", "--full", "--data-dir", directory], timeout: 600, lowPriority: true)
        #expect(full.status == 0, "\(full.stdout) \(full.stderr)")
        #expect(full.stdout == "verify: ok events=\(head) head=\(ledger.hash)\n")

        // (history, owner, sessions and export across the boundary: the test below, on a smaller ledger.)
    }

    @Test("history, owner --at, sessions --at and export across the boundary; --archive elsewhere")
    func queriesAcrossTheBoundary() async throws {
        try await offPool { try Self.queriesAcrossTheBoundaryBody() }
    }

    static func queriesAcrossTheBoundaryBody() throws {
        try withMemoryScratchDirectory("audit-archive") { directory in
            let end = wallClockMicroseconds()
            let ledger = try ArchivedLedger.make(directory, cycles: 2_000, days: 10, every: 200, retentionDays: 5, sessions: 20, end: end)
            try #require(ledger.segments.count >= 3)
            #expect(ledger.liveFirst > 1)
            let history = try runAuditBlocking(["history", "--session", "s-3", "--json", "--data-dir", directory]).jsonLines()
            #expect(history.count == 200)
            #expect((history.first?["seq"] as? Int ?? 0) < Int(ledger.liveFirst))
            // owner --at a time inside the archive: s-3 was last released then, so it is free.
            let early = iso(end - 9 * ArchivedLedger.day)
            let owner = try runAuditBlocking(["owner", "--session", "s-3", "--at", early, "--json", "--data-dir", directory])
            #expect(owner.status == 0, "\(owner.stdout) \(owner.stderr)")
            let sessions = try runAuditBlocking(["sessions", "--at", early, "--json", "--data-dir", directory])
            #expect(sessions.status == 0, "\(sessions.stderr)")
            // export from inside the archive to inside the live log, chained across the boundary.
            let from = Int(ledger.liveFirst) - 50
            let export = try runAuditBlocking(["export", "--from", "\(from)", "--to", "\(from + 100)", "--data-dir", directory]).jsonLines()
            #expect(export.map { $0["seq"] as? Int } == (from...(from + 100)).map { $0 })
            let all = try runAuditBlocking(["export", "--data-dir", directory]).jsonLines()
            #expect(all.count == Int(ledger.head))

            // The archive copied off the machine and read from there.
            let elsewhere = directory + "-elsewhere"
            defer { try? FileManager.default.removeItem(atPath: elsewhere) }
            try FileManager.default.moveItem(atPath: ledger.archiveDirectory, toPath: elsewhere)
            let without = try runAuditBlocking(["verify", "--data-dir", directory])
            #expect(without.status == 1)
            #expect(without.stdout.contains("missing"), "\(without.stdout)")
            let with = try runAuditBlocking(["verify", "--data-dir", directory, "--archive", elsewhere])
            #expect(with.status == 0, "\(with.stdout) \(with.stderr)")
        }
    }

    @Test("One tampered byte in a segment is found and the segment named; so is a deleted middle segment")
    func tamperedAndDeletedSegments() async throws {
        try await offPool { try Self.tamperedAndDeletedSegmentsBody() }
    }

    static func tamperedAndDeletedSegmentsBody() throws {
        try withMemoryScratchDirectory("audit-archive") { directory in
            let ledger = try ArchivedLedger.make(directory, cycles: 2_000, days: 10, every: 200, retentionDays: 5, sessions: 20)
            try #require(ledger.segments.count >= 3)
            let middle = ledger.segments[1].name
            let path = ledger.archiveDirectory + "/" + middle
            let original = try #require(FileManager.default.contents(atPath: path))
            for offset in [40, 100, SegmentHeader.size + 10, original.count / 2, original.count - 3] {
                var bytes = original
                bytes[offset] ^= 0x01
                chmod(path, 0o640)
                try bytes.write(to: URL(fileURLWithPath: path))
                // Inside a segment only --full reads: the default checks the segments' headers.
                let verify = try runAuditBlocking(["verify", "--full", "--data-dir", directory])
                #expect(verify.status == 1, "byte \(offset): \(verify.stdout)")
                #expect(verify.stdout.contains("archive segment \(middle)"), "byte \(offset): \(verify.stdout)")
                #expect(verify.stdout.contains("altered"), "byte \(offset): \(verify.stdout)")
                // Nothing is answered from a damaged log.
                let history = try runAuditBlocking(["history", "--session", "s-1", "--data-dir", directory])
                #expect(history.status == 1)
            }
            try original.write(to: URL(fileURLWithPath: path))
            #expect(try runAuditBlocking(["verify", "--full", "--data-dir", directory]).status == 0)
            #expect(try runAuditBlocking(["verify", "--data-dir", directory]).status == 0)
            try FileManager.default.removeItem(atPath: path)
            for mode in [[], ["--full"]] {
                let verify = try runAuditBlocking(["verify", "--json", "--data-dir", directory] + mode).json()
                #expect(verify["ok"] as? Bool == false, "\(mode)")
                let problem = verify["problem"] as? String ?? ""
                #expect(problem.contains(middle) && problem.contains("missing"), "\(mode): \(problem)")
            }
        }
    }
}
