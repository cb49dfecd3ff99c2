import ArgumentParser
import Foundation
import SessionLedger

@main
struct CustodyAudit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custody-audit",
        abstract: "Questions a Custody session ledger. Opens it read-only; safe while custody runs.",
        subcommands: [Verify.self]
    )
}

/// Prints a one-line error naming the problem and exits non-zero.
func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("custody-audit: \(message)\n".utf8))
    return ExitCode.failure
}

func openReadOnly(_ directory: String) throws -> LedgerStore {
    do {
        return try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
    } catch {
        throw fail("\(error)")
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replays the whole log: record format, dense sequence numbers, hash chain, and the stored projection.")

    @Option(help: "Ledger directory.")
    var dataDir: String = "./data"

    func run() throws {
        let store = try openReadOnly(dataDir)
        defer { store.close() }
        let report: VerifyReport
        do {
            report = try store.read { try $0.verify() }
        } catch {
            throw fail("\(error)")
        }
        if let problem = report.problem {
            let at = problem.firstBadSequence.map { " first_bad_seq=\($0)" } ?? ""
            print("verify: FAILED\(at) events_ok=\(report.events) problem=\"\(problem)\"")
            throw ExitCode.failure
        }
        print("verify: ok events=\(report.events) head=\(report.head.hash)")
    }
}
