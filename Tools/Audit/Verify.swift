import LMDBStorage
import ArgumentParser
import SessionLedger

/// `verify`: the whole log replayed and checked, and the stored projection compared.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replays the whole log: record format, dense sequence numbers, hash chain, and the stored projection.",
        discussion: """
            Prints `verify: ok events=N head=HASH`, or `verify: FAILED first_bad_seq=N ...` \
            naming the first bad record (first_bad_seq is absent when the log is intact but \
            the stored projection or head disagrees with it) and exits 1. Keep the printed \
            head elsewhere: a rewrite of the whole tail is detected only against it.
            """)

    @OptionGroup var ledger: LedgerOptions

    @Flag(help: "One JSON object.")
    var json = false

    func run() throws {
        try audit {
            let (head, problem) = try ledger.read { _, snapshot in
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
                if let problem = outcome.problem { return (outcome.head, Optional(problem)) }
                if let checkpointProblem { return (outcome.head, Optional(checkpointProblem)) }
                return (outcome.head, try fold.compare(with: snapshot, head: outcome.head))
            }
            var out = OutputBuffer()
            if json {
                var j = JSONObject()
                j.bool("ok", problem == nil)
                j.int("events", head.sequence)
                head.hash.withBytes { j.hex("head", $0) }
                j.time("headTime", head.sequence == 0 ? nil : head.timestamp)
                j.int("firstBadSeq", problem?.firstBadSequence)
                j.string("problem", problem.map { "\($0)" })
                out.bytes = j.close()
                out.bytes.append(UInt8(ascii: "\n"))
            } else if let problem {
                let at = problem.firstBadSequence.map { " first_bad_seq=\($0)" } ?? ""
                out.line("verify: FAILED\(at) events_ok=\(head.sequence) problem=\"\(problem)\"")
            } else {
                out.line("verify: ok events=\(head.sequence) head=\(head.hash)")
            }
            out.flush()
            if problem != nil { throw ExitCode.failure }
        }
    }
}
