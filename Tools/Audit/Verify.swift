import LMDBStorage
import ArgumentParser
import Foundation
import SessionLedger

/// `verify`: from the newest checkpoint by default (its projection rebuilt and proved, every
/// record after it chained and replayed, the archive's structure checked), or `--full`: every
/// record from sequence 1, archive segments included, and the stored projection compared.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Checks the log: from the newest checkpoint, or --full from sequence 1 (record format, dense sequence numbers, hash chain, the stored projection).",
        discussion: """
            Prints `verify: ok events=N head=HASH` (with ` from_checkpoint=C` when it started \
            from checkpoint C), or `verify: FAILED first_bad_seq=N ...` naming the first bad \
            record (first_bad_seq is absent when the log is intact but the stored projection, \
            the head or the archive disagrees with it) and exits 1. By default the projection \
            at the newest checkpoint is rebuilt from the stored projection and the entries kept \
            as they were there, proved against the checkpoint's digest, and the records after \
            it are replayed onto it: its cost follows the live sessions and the records since \
            that checkpoint. The archive's segments are checked for presence and links from \
            their headers. `--full` re-reads and re-hashes every record ever written, every \
            archive segment's records included, and folds them from the first: run it when \
            every byte must be proved (a segment altered inside is found only so). Keep the \
            printed head elsewhere: a rewrite of the whole tail is detected only against it.
            """)

    @OptionGroup var ledger: LedgerOptions

    @Flag(help: "One JSON object.")
    var json = false

    @Flag(help: "Every record from sequence 1, archive segments included, not only from the newest checkpoint.")
    var full = false

    @Flag(help: "With several --data-dir (a cluster's nodes): also check that no session ever had two owners at once (no two connected intervals overlap, in epoch order).")
    var cluster = false

    func run() throws {
        try audit {
            if ledger.isMerged || cluster { return try runCluster() }
            let (head, problem, from) = try ledger.read { _, snapshot -> (LedgerHead, VerifyProblem?, UInt64) in
                if !full, let report = try snapshot.verifySinceNewestCheckpoint(archive: ledger.archiveDirectory) {
                    return (report.head, report.problem, report.checkedFrom)
                }
                var fold = AuditFold()
                defer { fold.release() }
                // The newest checkpoint is proved against the fold of every record before it.
                let newest = try snapshot.lastCheckpoint()
                var checkpointProblem: VerifyProblem?
                let outcome = try LogScan.run(snapshot, archive: ledger.archiveDirectory, checkpoint: { r in
                    guard r.sequence == newest, checkpointProblem == nil else { return }
                    guard let checkpoint = r.checkpoint else { return }  // the chain check reports it
                    if let mismatch = fold.mismatch(with: checkpoint) {
                        checkpointProblem = .checkpointMismatch(sequence: r.sequence, detail: mismatch)
                    }
                }) { fold.apply($0) }
                if let problem = outcome.problem { return (outcome.head, Optional(problem), 1) }
                if let checkpointProblem { return (outcome.head, Optional(checkpointProblem), 1) }
                return (outcome.head, try fold.compare(with: snapshot, head: outcome.head), 1)
            }
            var out = OutputBuffer()
            if json {
                var j = JSONObject()
                j.bool("ok", problem == nil)
                j.int("events", head.sequence)
                head.hash.withBytes { j.hex("head", $0) }
                j.time("headTime", head.sequence == 0 ? nil : head.timestamp)
                j.int("firstBadSeq", problem?.firstBadSequence)
                j.int("checkedFrom", from)
                j.string("problem", problem.map { "\($0)" })
                out.bytes = j.close()
                out.bytes.append(UInt8(ascii: "\n"))
            } else if let problem {
                let at = problem.firstBadSequence.map { " first_bad_seq=\($0)" } ?? ""
                out.line("verify: FAILED\(at) events_ok=\(head.sequence)\(from > 1 ? " from_checkpoint=\(from)" : "") problem=\"\(problem)\"")
            } else {
                out.line("verify: ok events=\(head.sequence) head=\(head.hash)\(from > 1 ? " from_checkpoint=\(from)" : "")")
            }
            out.flush()
            if problem != nil { throw ExitCode.failure }
        }
    }

    /// Each node's ledger verified as on its own; with `--cluster`, their merged history
    /// checked for overlapping owners.
    func runCluster() throws {
        var failed = false
        var out = OutputBuffer()
        for (directory, node) in zip(ledger.dataDirs.isEmpty ? [ledger.dataDir] : ledger.dataDirs, ledger.nodeNames) {
            let archive = ledger.isMerged ? (directory as NSString).appendingPathComponent("archive") : ledger.archiveDirectory
            let (head, problem) = try LedgerOptions.read(directory) { _, snapshot -> (LedgerHead, VerifyProblem?) in
                if !full, let report = try snapshot.verifySinceNewestCheckpoint(archive: archive) {
                    return (report.head, report.problem)
                }
                var fold = AuditFold()
                defer { fold.release() }
                let outcome = try LogScan.run(snapshot, archive: archive) { fold.apply($0) }
                if let problem = outcome.problem { return (outcome.head, problem) }
                return (outcome.head, try fold.compare(with: snapshot, head: outcome.head))
            }
            if let problem {
                failed = true
                out.line("verify: FAILED node=\(node) problem=\"\(problem)\"")
            } else {
                out.line("verify: ok node=\(node) events=\(head.sequence) head=\(head.hash)")
            }
        }
        if cluster && !failed {
            let history = try ledger.mergedHistory()
            let overlaps = ClusterCheck.overlaps(history)
            for overlap in overlaps { out.line("verify: FAILED cluster \(overlap)") }
            if overlaps.isEmpty {
                out.line("verify: ok cluster nodes=\(ledger.nodeNames.count) events=\(history.count) no session had two owners at once")
            }
            failed = !overlaps.isEmpty
        }
        out.flush()
        if failed { throw ExitCode.failure }
    }
}
