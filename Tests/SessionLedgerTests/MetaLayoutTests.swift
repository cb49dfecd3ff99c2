import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Testing

// The keys every commit changes (head, connections, digest) live in LMDB's unnamed database
// (RECORD-FORMAT.md); a ledger written before keeps them in `meta`. Such a ledger is made
// here by moving them back, then opened.

/// Moves `0x00 ‖ name` of the unnamed database to `name` in `meta`, for the three keys, and
/// marks the format 1, in a closed ledger: the layout an earlier version wrote.
private func moveToEarlierLayout(_ directory: String) throws {
    try RawLedger.with(directory, writable: true) { ledger in
        let main = try ledger.table(nil)
        let meta = try ledger.table("meta")
        for name in ["head", "connections", "digest"] {
            let moved = [UInt8(0)] + Array(name.utf8)
            let value = try #require(ledger.get(main, moved), "no \(name) in the unnamed database")
            try ledger.put(meta, Array(name.utf8), value)
            try ledger.delete(main, moved)
        }
        try ledger.put(meta, Array("format".utf8), [1])
    }
}

/// The format marker in `meta`.
private func formatMarker(_ directory: String) throws -> UInt8? {
    try RawLedger.with(directory) { ledger in ledger.get(try ledger.table("meta"), Array("format".utf8))?.first }
}

/// Whether `name` is there as `0x00 ‖ name` in the unnamed database, and as `name` in `meta`.
private func where_(_ directory: String, _ name: String) throws -> (main: Bool, meta: Bool) {
    try RawLedger.with(directory) { ledger in
        (ledger.get(try ledger.table(nil), [0] + Array(name.utf8)) != nil, ledger.get(try ledger.table("meta"), Array(name.utf8)) != nil)
    }
}

@Suite("The keys every commit changes, in the unnamed database")
struct MetaLayoutTests {
    private static func claim(_ ledger: LMDBSessionLedger, _ session: String) async throws -> ClaimOutcome {
        try await ledger.claim(ClaimRequest(
            authenticationName: AuthenticationName(unchecked: "client-1"), sessionName: SessionName(unchecked: session),
            connection: ledger.nextConnectionNumber(), protocolVersion: .mqtt5, cleanStart: false,
            requestedExpiryInterval: 600, remoteAddress: "127.0.0.1:50000", identity: .authenticated))
    }

    @Test func aLedgerOfTheEarlierLayoutOpensAndMovesThemOnItsNextCommit() async throws {
        try await withMemoryScratchDirectory("meta-layout") { directory in
            let first = try LMDBSessionLedger(directory: directory, checkpointEvery: 5)
            for i in 0..<7 { _ = try await Self.claim(first, "s-\(i)") }
            let head = first.head
            first.close()
            #expect(try where_(directory, "head") == (true, false))
            #expect(try formatMarker(directory) == 2)
            try moveToEarlierLayout(directory)
            #expect(try where_(directory, "head") == (false, true))
            #expect(try formatMarker(directory) == 1)
            // Read-only (custody-audit): read as it is, not marked.
            let readOnly = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
            #expect(try readOnly.read { try $0.head() } == head)
            readOnly.close()
            #expect(try formatMarker(directory) == 1)

            // Read from `meta`: the head, the connection numbers (none repeats), the digest
            // that verify from the checkpoint proves.
            let reopened = try LMDBSessionLedger(directory: directory, checkpointEvery: 5)
            #expect(reopened.head.sequence >= head.sequence, "recovery may add events after the head it read")
            #expect(try reopened.verifyFromNewestCheckpoint().isIntact)
            let outcome = try await Self.claim(reopened, "s-new")
            guard case .granted = outcome else {
                Issue.record("not granted: \(outcome)")
                reopened.close()
                return
            }
            // The highest connection number, read from `meta`, kept the new one above all others.
            let records = try reopened.records()
            let newest = try #require(records.last { $0.event.sessionName.value == "s-new" }?.event.connection)
            let before = records.filter { $0.event.sessionName.value != "s-new" }.map(\.event.connection)
            #expect(before.allSatisfy { $0 < newest }, "\(before) \(newest)")
            #expect(try reopened.verify().isIntact)
            reopened.close()
            for name in ["head", "digest", "connections"] {
                #expect(try where_(directory, name) == (true, false), "\(name) moved by the commit")
            }
            #expect(try formatMarker(directory) == 2, "marked 2 by the writable open")
            let again = try LMDBSessionLedger(directory: directory, checkpointEvery: 5)
            defer { again.close() }
            #expect(try again.verifyFromNewestCheckpoint().isIntact)
            #expect(try again.session(SessionName(unchecked: "s-new")) != nil)
        }
    }
}
