import CLMDB
import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Testing

/// `verify` from the newest checkpoint: the projection there is rebuilt from the stored
/// projection and the `prior` table, proved against the checkpoint, and the records after
/// it are chained and replayed onto it.
@Suite("Verify from the newest checkpoint")
struct CheckpointVerifyTests {
    private static func claim(_ ledger: LMDBSessionLedger, _ client: String, _ session: String, expiry: UInt32 = 600) async throws -> ConnectionNumber? {
        let connection = ledger.nextConnectionNumber()
        let outcome = try await ledger.claim(ClaimRequest(
            authenticationName: AuthenticationName(unchecked: client), sessionName: SessionName(unchecked: session),
            connection: connection, protocolVersion: .mqtt5, cleanStart: false,
            requestedExpiryInterval: expiry, remoteAddress: "127.0.0.1:50000", identity: .authenticated))
        if case .granted = outcome { return connection }
        return nil
    }

    private static func release(_ ledger: LMDBSessionLedger, _ session: String, _ connection: ConnectionNumber) async throws {
        _ = try await ledger.release(ReleaseRequest(
            sessionName: SessionName(unchecked: session), connection: connection, reason: .clientInitiatedDisconnect))
    }

    private static func readOnly<R>(_ directory: String, _ body: (LedgerSnapshot) throws -> R) throws -> R {
        let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
        defer { store.close() }
        return try store.read(body)
    }

    @Test("At every point of a churn with expiries it starts at the newest checkpoint, rebuilds the projection a replay gives there, and ends where the whole-log verify ends")
    func agreesWithTheWholeLog() async throws {
        try await withMemoryScratchDirectory("checkpoint-verify") { directory in
            let clock = ManualClock()
            let ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: 10)
            defer { ledger.close() }
            var started = 0
            for round in 0..<14 {
                for i in 0..<7 {
                    let session = "r\(round % 3)-\(i % 5)"
                    if let connection = try await Self.claim(ledger, "client-\(i % 4)", session, expiry: UInt32(i % 3) * 300),
                       (round + i) % 4 != 0 {
                        try await Self.release(ledger, session, connection)
                    }
                }
                if round % 5 == 4 {
                    clock.advance(seconds: 400)
                    _ = try await ledger.expireDue(limit: 1000)
                }
                let fast = try ledger.verifyFromNewestCheckpoint()
                let full = try ledger.verify()
                #expect(fast.isIntact, "round \(round): \(String(describing: fast.problem))")
                #expect(full.isIntact, "round \(round): \(String(describing: full.problem))")
                #expect(fast.head == full.head)
                #expect(full.checkedFrom == 1)
                let (checkpoint, rebuilt, replayed) = try Self.readOnly(directory) { snapshot in
                    let found = try snapshot.projectionAtNewestCheckpoint()
                    let replayed = try found.map { try snapshot.replay(through: .sequence($0.0.sequence)).0 }
                    return (found?.0, found?.1, replayed)
                }
                if let checkpoint, let rebuilt, let replayed {
                    started += 1
                    #expect(fast.checkedFrom == checkpoint.sequence)
                    #expect(rebuilt.sessions == replayed.sessions, "round \(round)")
                    #expect(rebuilt.liveSessionCounts == replayed.liveSessionCounts, "round \(round)")
                }
            }
            #expect(started >= 10)
        }
    }

    /// Ten sessions claimed (records 1–10), the checkpoint (11), then `new-0` claimed (12) and
    /// `old-0` released (13): `prior` holds old-0 as connected and new-0 as absent.
    private static func scenario(_ directory: String) async throws {
        let ledger = try LMDBSessionLedger(directory: directory, clock: ManualClock().ledgerClock, checkpointEvery: 10)
        var connections: [ConnectionNumber] = []
        for i in 0..<10 { connections.append(try #require(try await claim(ledger, "owner-\(i % 3)", "old-\(i)"))) }
        _ = try await claim(ledger, "owner-9", "new-0")
        try await release(ledger, "old-0", connections[0])
        #expect(ledger.head.sequence == 13)
        #expect(try ledger.verifyFromNewestCheckpoint().checkedFrom == 11)
        ledger.close()
    }

    private static func tampered(
        table: String, key: String, flags: UInt32 = 0, _ edit: (inout [UInt8]) -> Void
    ) async throws -> (fast: VerifyReport, full: VerifyReport) {
        try await withMemoryScratchDirectory("checkpoint-verify") { directory in
            try await scenario(directory)
            try editValue(in: directory, table: table, flags: flags, key: Array(key.utf8), edit)
            return try readOnly(directory) { (try $0.verifyFromNewestCheckpoint(), try $0.verify()) }
        }
    }

    @Test("An entry unchanged since the checkpoint, altered, makes the rebuilt projection disagree with the checkpoint")
    func alteredUnchangedEntry() async throws {
        let (fast, full) = try await Self.tampered(table: "sessions", key: "old-3") { $0[8] ^= 1 }
        guard case .checkpointMismatch(11, _) = fast.problem else {
            Issue.record("expected a mismatch at checkpoint 11, got \(String(describing: fast.problem))")
            return
        }
        #expect(!full.isIntact)
    }

    @Test("A kept prior entry, altered, makes the rebuilt projection disagree with the checkpoint")
    func alteredPriorEntry() async throws {
        let (fast, _) = try await Self.tampered(table: "prior", key: "old-0") { $0[1 + 8] ^= 1 }
        guard case .checkpointMismatch(11, _) = fast.problem else {
            Issue.record("expected a mismatch at checkpoint 11, got \(String(describing: fast.problem))")
            return
        }
    }

    @Test("An entry changed since the checkpoint, altered, disagrees with the replay from it")
    func alteredChangedEntry() async throws {
        let (fast, full) = try await Self.tampered(table: "sessions", key: "new-0") { $0[8] ^= 1 }
        guard case .projectionMismatch = fast.problem else {
            Issue.record("expected a projection mismatch, got \(String(describing: fast.problem))")
            return
        }
        #expect(!full.isIntact)
    }

    @Test("A record after the checkpoint, altered, breaks the chain from it at its sequence number")
    func alteredRecordAfterTheCheckpoint() async throws {
        try await withMemoryScratchDirectory("checkpoint-verify") { directory in
            try await Self.scenario(directory)
            try editRecord(in: directory, sequence: 12)
            let fast = try Self.readOnly(directory) { try $0.verifyFromNewestCheckpoint() }
            #expect(fast.problem == .hashMismatch(sequence: 12))
        }
    }

    @Test("A ledger without a checkpoint is verified from its first record")
    func withoutACheckpoint() async throws {
        try await withMemoryScratchDirectory("checkpoint-verify") { directory in
            let ledger = try LMDBSessionLedger(directory: directory, clock: ManualClock().ledgerClock, checkpointEvery: 0)
            defer { ledger.close() }
            for i in 0..<5 { _ = try await Self.claim(ledger, "c", "s-\(i)") }
            let report = try ledger.verifyFromNewestCheckpoint()
            #expect(report.isIntact)
            #expect(report.checkedFrom == 1)
            #expect(report.events == 5)
        }
    }
}

/// The entries of one table of a ledger (`mdb_stat`, Debian's lmdb-utils).
func tableEntries(_ directory: String, _ table: String) throws -> Int {
    let (status, out, err) = try run("/usr/bin/mdb_stat", ["-s", table, directory])
    try #require(status == 0, "mdb_stat: \(err)")
    let line = try #require(out.split(separator: "\n").first { $0.contains("Entries:") })
    return try #require(Int(line.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)))
}

@Suite("The prior table keeps only sessions the checkpoint held")
struct PriorTableTests {
    /// A session begun after the checkpoint writes no `prior` entry (its creation's commit
    /// touches one table fewer); one the checkpoint held gets its entry at its first change;
    /// verify from the checkpoint agrees with the whole log either way.
    @Test func sessionsBegunAfterTheCheckpointKeepNothing() async throws {
        try await withMemoryScratchDirectory("prior-table") { directory in
            let clock = ManualClock()
            // Eight claims, then the checkpoint (sequence 9); the seven events after it stay
            // short of the next one.
            let ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: 8)
            var held: [String: ConnectionNumber] = [:]
            for i in 0..<8 {
                held["old-\(i)"] = try #require(try await claimSession(ledger, "client-\(i % 4)", "old-\(i)"))
            }
            for i in 0..<3 {
                let connection = try #require(try await claimSession(ledger, "client-\(i)", "new-\(i)"))
                _ = try await ledger.release(ReleaseRequest(
                    sessionName: SessionName(unchecked: "new-\(i)"), connection: connection, reason: .clientInitiatedDisconnect))
            }
            _ = try await ledger.release(ReleaseRequest(
                sessionName: SessionName(unchecked: "old-0"), connection: held["old-0"]!, reason: .clientInitiatedDisconnect))
            let fast = try ledger.verifyFromNewestCheckpoint()
            let full = try ledger.verify()
            ledger.close()
            #expect(try tableEntries(directory, "prior") == 1, "only old-0, which the checkpoint held")
            #expect(fast.isIntact && fast.checkedFrom == 9, "\(fast)")
            #expect(full.isIntact && fast.head == full.head)
        }
    }
}

private func claimSession(_ ledger: LMDBSessionLedger, _ client: String, _ session: String) async throws -> ConnectionNumber? {
    let connection = ledger.nextConnectionNumber()
    let outcome = try await ledger.claim(ClaimRequest(
        authenticationName: AuthenticationName(unchecked: client), sessionName: SessionName(unchecked: session),
        connection: connection, protocolVersion: .mqtt5, cleanStart: false,
        requestedExpiryInterval: 600, remoteAddress: "127.0.0.1:50000", identity: .authenticated))
    if case .granted = outcome { return connection }
    return nil
}

/// Changes one stored value of a table of a closed ledger, in place.
func editValue(in directory: String, table: String, flags: UInt32 = 0, key: [UInt8], _ edit: (inout [UInt8]) -> Void) throws {
    try RawLedger.with(directory, writable: true) { ledger in
        let dbi = try ledger.table(table, flags: flags)
        var value = try #require(ledger.get(dbi, key), "no \(table) entry under the key")
        edit(&value)
        try ledger.put(dbi, key, value)
    }
}
