import ArgumentParser
import Foundation
import LMDBStorage
import SessionLedger

/// `custody-bench ledger-years`: a ledger as it looks after a long run (many live sessions, a
/// long history, checkpoints), built with the writer's bulk load; then the start-up time of
/// the ledger as `custody` opens it, the bytes per event live and archived, and the time to
/// archive half of it.
struct LedgerYearsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger-years",
        abstract: "Start-up time and bytes per event (live and archived) of a ledger with many sessions and a long history.")

    @Option(help: "Live sessions at the end (disconnected, expiry 8 h).")
    var sessions: Int = 1_000_000

    @Option(help: "Events in the history, those sessions' included (the rest: connect/disconnect cycles of other names).")
    var events: Int = 10_000_000

    @Option(help: "Ledger directory; it must not hold a ledger yet. Default: a temporary one, removed afterwards.")
    var dataDir: String?

    @Option(help: "A checkpoint every N records.")
    var checkpointEvery: UInt64 = 100_000

    @Option(help: "Requests per bulk transaction.")
    var batch: Int = 20_000

    @Option(help: "Start-up rounds to time.")
    var rounds: Int = 3

    func run() throws {
        let temporary = dataDir == nil
        let directory = dataDir ?? FileManager.default.temporaryDirectory.appendingPathComponent("custody-years-\(UUID().uuidString)").path
        if FileManager.default.fileExists(atPath: directory + "/data.mdb") {
            throw ValidationError("--data-dir \(directory) already holds a ledger; give a new directory")
        }
        defer { if temporary { try? FileManager.default.removeItem(atPath: directory) } }
        let policy = try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 100, maximumSessionExpiryInHours: 8)

        // Build: the live sessions first, then cycles of other names up to the history's size.
        let buildStart = DispatchTime.now().uptimeNanoseconds
        let cpuStart = processCPUMicroseconds()
        do {
            let store = try LedgerStore(directory: directory)
            let writer = try LedgerWriter(store: store, policy: policy)
            writer.checkpointEvery = checkpointEvery
            _ = try writer.recover()
            var requests: [LedgerWriter.BulkRequest] = []
            requests.reserveCapacity(batch)
            func flush() throws {
                if !requests.isEmpty { try writer.load(requests, batch: requests.count) }
                requests.removeAll(keepingCapacity: true)
            }
            for i in 0..<sessions {
                let name = SessionName(unchecked: "device-\(i)")
                let connection = writer.nextConnectionNumber()
                requests.append(.claim(ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "fleet-\(i / 100)"), sessionName: name,
                    connection: connection, protocolVersion: .mqtt5, cleanStart: false, requestedExpiryInterval: 8 * 3600,
                    remoteAddress: "10.\(i >> 16 & 255).\(i >> 8 & 255).\(i & 255):4\(i % 10000)")))
                requests.append(.release(ReleaseRequest(sessionName: name, connection: connection, reason: .connectionLost)))
                if requests.count >= batch { try flush() }
            }
            let cycles = max(0, (events - 2 * sessions) / 2)
            for i in 0..<cycles {
                let name = SessionName(unchecked: "churn-\(i % 50_000)")
                let connection = writer.nextConnectionNumber()
                requests.append(.claim(ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "churner-\(i % 50_000 / 50)"), sessionName: name,
                    connection: connection, protocolVersion: .mqtt3_1_1, cleanStart: true, requestedExpiryInterval: 0,
                    remoteAddress: "192.168.\(i >> 8 & 255).\(i & 255):5\(i % 10000)")))
                requests.append(.release(ReleaseRequest(sessionName: name, connection: connection, reason: .clientInitiatedDisconnect)))
                if requests.count >= batch { try flush() }
            }
            try flush()
            let head = writer.currentHead
            let (logBytes, usage, checkpoint) = try store.read { (try $0.logBytes() as Int, $0.mapUsage(), try $0.lastCheckpoint()) }
            store.close()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - buildStart) / 1e9
            print("build: records=\(head.sequence) live_sessions=\(sessions) seconds=\(String(format: "%.1f", seconds)) cpu_s=\(String(format: "%.1f", Double(processCPUMicroseconds() - cpuStart) / 1e6)) newest_checkpoint=\(checkpoint)")
            print("bytes: data_file=\(fileSize(directory + "/data.mdb")) map_used=\(usage.usedBytes) log_pages=\(logBytes) live_bytes_per_event=\(String(format: "%.1f", Double(logBytes) / Double(head.sequence))) map_bytes_per_event=\(String(format: "%.1f", Double(usage.usedBytes) / Double(head.sequence)))")
        }

        // Start-up as custody does it: open and recover, count the sessions, list the live names.
        for round in 0..<max(1, rounds) {
            let start = DispatchTime.now().uptimeNanoseconds
            let cpu = processCPUMicroseconds()
            let ledger = try LMDBSessionLedger(directory: directory, policy: policy, countSessions: true, checkpointEvery: checkpointEvery)
            let opened = DispatchTime.now().uptimeNanoseconds
            let names = try ledger.liveSessionNames()
            let end = DispatchTime.now().uptimeNanoseconds
            let recovery = ledger.recovery
            ledger.close()
            print("startup: round=\(round) seconds=\(String(format: "%.3f", Double(end - start) / 1e9)) open_recover_count=\(String(format: "%.3f", Double(opened - start) / 1e9)) live_names=\(names.count) checked_from=\(recovery.checkedFrom) checked_records=\(recovery.checkedRecords) recovery_events=\(recovery.events.count) cpu_s=\(String(format: "%.3f", Double(processCPUMicroseconds() - cpu) / 1e6))")
        }

        // Archive about half of the log (by size), then the bytes per archived event.
        let store = try LedgerStore(directory: directory)
        let writer = try LedgerWriter(store: store, policy: policy)
        writer.checkpointEvery = checkpointEvery
        _ = try writer.recover()
        writer.start()
        let half = try store.read { try $0.logBytes() } / 2
        let archiveDirectory = directory + "/archive"
        let archiver = LedgerArchiver(
            store: store, writer: writer, directory: archiveDirectory,
            policy: LedgerArchiver.Policy(retention: nil, maxLiveBytes: half))
        let archiveStart = DispatchTime.now().uptimeNanoseconds
        let archiveCPU = processCPUMicroseconds()
        while try archiver.runOnce() {}
        let archiveSeconds = Double(DispatchTime.now().uptimeNanoseconds - archiveStart) / 1e9
        writer.stop()
        let boundary = try store.read { try $0.archiveBoundary()?.sequence ?? 0 }
        store.close()
        let archived = LedgerArchiver.archiveBytes(archiveDirectory)
        var uncompressed = 0
        for segment in ArchiveSegment.list(archiveDirectory) {
            uncompressed += (try? ArchiveSegment.header(at: archiveDirectory + "/" + segment.name).bodyBytes) ?? 0
        }
        print("archive: events=\(boundary) segments=\(ArchiveSegment.list(archiveDirectory).count) bytes=\(archived) archived_bytes_per_event=\(String(format: "%.1f", Double(archived) / Double(max(boundary, 1)))) uncompressed_bytes_per_event=\(String(format: "%.1f", Double(uncompressed) / Double(max(boundary, 1)))) seconds=\(String(format: "%.1f", archiveSeconds)) cpu_s=\(String(format: "%.1f", Double(processCPUMicroseconds() - archiveCPU) / 1e6))")
        let start = DispatchTime.now().uptimeNanoseconds
        let ledger = try LMDBSessionLedger(directory: directory, policy: policy, countSessions: true, checkpointEvery: checkpointEvery)
        _ = try ledger.liveSessionNames()
        let end = DispatchTime.now().uptimeNanoseconds
        ledger.close()
        print("startup after archiving: seconds=\(String(format: "%.3f", Double(end - start) / 1e9))")
    }
}
