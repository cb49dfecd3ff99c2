import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Synchronization
import Testing

// What operations need from the ledger: the events of every commit in order (lifecycle
// events over MQTT), one commit for many releases (shutdown), running session counts (metrics).

private final class Collected: Sendable {
    let events = Mutex<[CommittedEvent]>([])
    let commits = Mutex<[CommitStatistics]>([])
}

private func withHookedLedger(
    countSessions: Bool = true, _ body: (LMDBSessionLedger, Collected, String) async throws -> Void
) async throws {
    let directory = scratchDirectory("hooks")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let collected = Collected()
    let ledger = try LMDBSessionLedger(
        directory: directory, onCommit: { stats in collected.commits.withLock { $0.append(stats) } },
        onEvents: { events in collected.events.withLock { $0.append(contentsOf: events) } },
        countSessions: countSessions)
    defer { ledger.close() }
    try await body(ledger, collected, directory)
}

private func claim(_ ledger: LMDBSessionLedger, _ client: String, _ session: String, expiry: UInt32 = 0) async throws -> (ClaimOutcome, ConnectionNumber) {
    let connection = ledger.nextConnectionNumber()
    let outcome = try await ledger.claim(ClaimRequest(
        authenticationName: AuthenticationName(unchecked: client), sessionName: SessionName(unchecked: session),
        connection: connection, requestedExpiryInterval: expiry, remoteAddress: "127.0.0.1:1"))
    return (outcome, connection)
}

@Suite("Ledger hooks for operations")
struct LedgerHooksTests {
    @Test func everyEventReachesTheHookOnceInSequenceOrderWithItsStoredHash() async throws {
        try await withHookedLedger { ledger, collected, _ in
            // Concurrent claims (some rejected, some taking over), releases.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<30 {
                    group.addTask { _ = try await claim(ledger, "client-\(i % 4)", "s-\(i % 7)", expiry: 60) }
                }
                try await group.waitForAll()
            }
            let events = collected.events.withLock { $0 }
            let head = ledger.head.sequence
            #expect(events.map(\.event.sequence) == Array(1...head))
            // Each is the stored record, hash included.
            let records = try ledger.records()
            for committed in events {
                let record = try #require(records.first { $0.event.sequence == committed.event.sequence })
                #expect(record.event == committed.event)
                #expect(record.hash == committed.hash)
            }
        }
    }

    @Test func releaseAllRecordsEveryEndInOneCommit() async throws {
        try await withHookedLedger { ledger, collected, _ in
            var held: [(SessionName, ConnectionNumber)] = []
            for i in 0..<8 {
                let (outcome, connection) = try await claim(ledger, "c\(i % 3)", "s\(i)", expiry: 300)
                guard case .granted = outcome else { Issue.record("not granted: \(outcome)"); return }
                held.append((SessionName(unchecked: "s\(i)"), connection))
            }
            let commitsBefore = collected.commits.withLock { $0.count }
            let requests = held.map {
                ReleaseRequest(sessionName: $0.0, connection: $0.1, reason: .serverInitiatedDisconnect)
            } + [ReleaseRequest(sessionName: SessionName(unchecked: "s0"), connection: 999_999, reason: .connectionLost)]
            let results = try await ledger.releaseAll(requests)
            #expect(results.count == 9)
            #expect(results.last! == nil)  // not the holder: nothing recorded
            let ends = results.compactMap { $0 }
            #expect(ends.count == 8)
            #expect(ends.allSatisfy { $0.kind == .disconnected(.serverInitiatedDisconnect) })
            #expect(Set(ends.map(\.timestamp)).count == 1)
            let commits = collected.commits.withLock { $0 }
            #expect(commits.count == commitsBefore + 1)
            #expect(commits.last?.events == 8)
            #expect(ledger.sessionCounts == SessionCounts(live: 8, connected: 0))
            #expect(try ledger.verify().events == ledger.head.sequence)
        }
    }

    @Test func sessionCountsFollowEveryKindOfEventAndMatchAFreshCount() async throws {
        let directory = scratchDirectory("counts")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let ledger = try LMDBSessionLedger(directory: directory, countSessions: true)
            #expect(ledger.sessionCounts == SessionCounts(live: 0, connected: 0))
            let (_, a) = try await claim(ledger, "alice", "a", expiry: 300)
            let (_, b) = try await claim(ledger, "alice", "b", expiry: 0)
            _ = try await claim(ledger, "bob", "a")  // rejected: owned by alice
            #expect(ledger.sessionCounts == SessionCounts(live: 2, connected: 2))
            _ = try await claim(ledger, "alice", "a", expiry: 300)  // takeover
            #expect(ledger.sessionCounts == SessionCounts(live: 2, connected: 2))
            try await ledger.release(ReleaseRequest(sessionName: SessionName(unchecked: "b"), connection: b, reason: .clientInitiatedDisconnect))
            #expect(ledger.sessionCounts == SessionCounts(live: 1, connected: 1))  // expiry 0: ended
            _ = a
            let current = try #require(try ledger.session(SessionName(unchecked: "a")))
            try await ledger.release(ReleaseRequest(sessionName: SessionName(unchecked: "a"), connection: current.connection, reason: .connectionLost))
            #expect(ledger.sessionCounts == SessionCounts(live: 1, connected: 0))
            #expect(ledger.sessionCounts?.disconnected == 1)
            ledger.close()
        }
        // Reopened: the count starts from a scan and agrees.
        let reopened = try LMDBSessionLedger(directory: directory, countSessions: true)
        defer { reopened.close() }
        #expect(reopened.sessionCounts == SessionCounts(live: 1, connected: 0))
        let unCounted = reopened.sessionCounts
        #expect(unCounted != nil)
    }

    @Test func recoveryReportsItsEventsWithHashes() async throws {
        let directory = scratchDirectory("recovery")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let ledger = try LMDBSessionLedger(directory: directory)
            _ = try await claim(ledger, "alice", "a", expiry: 300)
            _ = try await claim(ledger, "alice", "b", expiry: 300)
            ledger.close()  // both still shown connected: a crash, as far as the ledger knows
        }
        let reopened = try LMDBSessionLedger(directory: directory, countSessions: true)
        defer { reopened.close() }
        let events = reopened.recovery.events
        #expect(events.map(\.event.sequence) == [3, 4])
        #expect(events.allSatisfy { $0.event.kind == .disconnected(.brokerRestart) })
        #expect(events.last?.hash == reopened.head.hash)
        #expect(reopened.sessionCounts == SessionCounts(live: 2, connected: 0))
    }
}
