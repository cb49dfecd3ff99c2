import LMDBStorage
import CustodyTesting
import Foundation
import SessionLedger
import Testing

enum CrashTestError: Error {
    case childNeverReady(String)
}

/// Starts the crash child with `arguments` (and `environment` added to this process's; its
/// output to the file `output`), waits until it says `ready`, lets it work for a random number
/// of microseconds in `after`, then kills it with SIGKILL.
func killedAtRandom(
    _ executable: URL, _ arguments: [String], environment: [String: String] = [:], output: String,
    after: ClosedRange<UInt32>, using generator: inout SystemRandomNumberGenerator
) throws {
    let child = Process()
    child.executableURL = executable
    child.arguments = arguments
    if !environment.isEmpty {
        child.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    child.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
    child.standardError = FileHandle.nullDevice
    try child.run()
    let deadline = Date().addingTimeInterval(20)
    while !((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("ready") {
        guard Date() < deadline, child.isRunning else {
            child.terminate()
            throw CrashTestError.childNeverReady(output)
        }
        usleep(10_000)
    }
    usleep(UInt32.random(in: after, using: &generator))
    kill(child.processIdentifier, SIGKILL)
    child.waitUntilExit()
    #expect(child.terminationReason == .uncaughtSignal)
}

@Suite("Crash safety")
struct CrashRecoveryTests {
    /// A child appends claims and releases as fast as it can and prints each one only after
    /// it is durable. Killed with SIGKILL at random moments, round after round on the same
    /// ledger: everything it printed must be in the reopened log, and verify must pass.
    @Test func everyReportedGrantSurvivesSIGKILL() async throws {
        try await offPool {
            let executable = try builtProduct("custody-bench")
            let directory = scratchDirectory("crash")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            var generator = SystemRandomNumberGenerator()
            var totalGranted = 0

            for round in 0..<5 {
                let output = directory + "-round\(round).out"
                _ = FileManager.default.createFile(atPath: output, contents: nil)
                defer { try? FileManager.default.removeItem(atPath: output) }
                try killedAtRandom(
                    executable, ["ledger-crash-child", "--data-dir", directory, "--prefix", "round\(round)"],
                    output: output, after: 50_000...400_000, using: &generator)

                let lines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
                var reported: [(kind: String, name: String, sequence: UInt64)] = []
                for line in lines {
                    let parts = line.split(separator: " ")
                    guard parts.count == 3, parts[0] == "granted" || parts[0] == "released",
                          let sequence = UInt64(parts[2]) else { continue }
                    reported.append((String(parts[0]), String(parts[1]), sequence))
                }
                #expect(!lines.contains { $0.hasPrefix("failed") })
                totalGranted += reported.filter { $0.kind == "granted" }.count

                // Read-only first: what the crash left, before recovery touches it.
                let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
                try store.read { snapshot in
                    for item in reported {
                        let record = try #require(try snapshot.record(at: item.sequence), "\(item.kind) \(item.name) at \(item.sequence) is missing")
                        #expect(record.event.sessionName.value == item.name)
                        if item.kind == "granted" {
                            #expect(record.event.kind == .connected)
                        } else {
                            #expect(record.event.kind == .disconnected(.clientInitiatedDisconnect))
                        }
                    }
                    let report = try snapshot.verify()
                    #expect(report.isIntact, "round \(round): \(String(describing: report.problem))")
                }
                store.close()

                // Then recovery: no session may stay connected, and the result must verify.
                let ledger = try LMDBSessionLedger(directory: directory)
                let replayed = try ledger.replay(through: .end)
                #expect(!replayed.sessions.values.contains { $0.isConnected })
                #expect(try ledger.verify().isIntact)
                #expect(try ledger.verifyFromNewestCheckpoint().isIntact)
                ledger.close()
            }
            #expect(totalGranted > 0)
        }
    }

    /// The same child with archiving running beside it (a checkpoint every 40 records, the
    /// live log kept under 24 KiB): killed at random moments, round after round, wherever
    /// the move to the archive is. After every restart the log (archive and live) verifies
    /// with no gap, holds everything the child was told, and no move is left half done.
    @Test func archivingSurvivesSIGKILL() async throws {
        try await offPool { try Self.archivingSurvivesSIGKILLBody() }
    }

    static func archivingSurvivesSIGKILLBody() throws {
        let executable = try builtProduct("custody-bench")
        // On a tmpfs where there is one: a process killed keeps what it committed without any
        // fsync, and the child's nonstop fsyncs would hold up those of the tests beside it.
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let directory = base + "/custody-crash-archive-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var generator = SystemRandomNumberGenerator()
        var archivedLines = 0
        for round in 0..<6 {
            let output = directory + "-round\(round).out"
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: output) }
            try killedAtRandom(
                executable,
                [
                    "ledger-crash-child", "--data-dir", directory, "--prefix", "round\(round)", "--window", "16",
                    "--checkpoint-every", "40", "--max-live-bytes", "\(24 << 10)",
                ],
                output: output, after: 200_000...900_000, using: &generator)

            let lines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
            archivedLines += lines.filter { $0.hasPrefix("archived") }.count
            var reported: [String: UInt64] = [:]
            for line in lines {
                let parts = line.split(separator: " ")
                if parts.count == 3, parts[0] == "granted", let sequence = UInt64(parts[2]) { reported[String(parts[1])] = sequence }
            }
            // The restart finishes any move the kill interrupted; then everything reads as one log.
            let ledger = try LMDBSessionLedger(directory: directory)
            let report = try ledger.verify()
            #expect(report.isIntact, "round \(round): \(String(describing: report.problem))")
            let fromCheckpoint = try ledger.verifyFromNewestCheckpoint()
            #expect(fromCheckpoint.isIntact, "round \(round): \(String(describing: fromCheckpoint.problem))")
            #expect(fromCheckpoint.head == report.head)
            let records = try ledger.records()
            var bySequence: [UInt64: LedgerRecord] = [:]
            for record in records { bySequence[record.event.sequence] = record }
            for (name, sequence) in reported {
                let record = bySequence[sequence]
                #expect(record?.event.sessionName.value == name, "granted \(name) at \(sequence) is missing")
                #expect(record?.event.kind == .connected)
            }
            let boundary = try ledger.store.read { try $0.archiveBoundary() }?.sequence ?? 0
            let segments = ArchiveSegment.list(ledger.archiveDirectory)
            #expect((segments.last?.range.upperBound ?? 0) == boundary, "round \(round): a move was left half done")
            if let live = try ledger.liveLog() { #expect(live.first == boundary + 1) }
            ledger.close()
        }
        #expect(archivedLines > 0, "the child never archived")
    }
}
