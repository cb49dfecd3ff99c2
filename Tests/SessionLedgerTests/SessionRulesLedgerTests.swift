import CLMDB
import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Synchronization
import Testing

// The session rules of DESIGN.md §1 (R1–R8) and the ledger guarantees of §2, through the
// real `LMDBSessionLedger` over LMDB in a fresh temporary directory per test, with a manual clock.

// MARK: - Helpers

/// Opens a ledger in a fresh directory, runs `body`, closes the ledger and removes the directory.
private func withLedger(
    policy: NamespacePolicy = .default, mapSize: Int? = nil,
    clock: ManualClock = ManualClock(), _ body: (LMDBSessionLedger, ManualClock) async throws -> Void
) async throws {
    try await withScratchDirectory("session-rules") { directory in
        let ledger = try LMDBSessionLedger(directory: directory, policy: policy, mapSize: mapSize, clock: clock.ledgerClock)
        defer { ledger.close() }
        try await body(ledger, clock)
    }
}

private func policy(sessions: Int = 10, hours: Int = 1) throws -> NamespacePolicy {
    try NamespacePolicy(maximumClientSessionsPerAuthenticationName: sessions, maximumSessionExpiryInHours: hours)
}

private struct Claimed: Sendable {
    var outcome: ClaimOutcome
    var connection: ConnectionNumber

    var grant: SessionGrant? {
        if case .granted(let grant) = outcome { return grant }
        return nil
    }

    var rejection: RejectionReason? {
        if case .rejected(let reason, _) = outcome { return reason }
        return nil
    }

    var sequence: UInt64 {
        switch outcome {
        case .granted(let grant): grant.sequence
        case .rejected(_, let sequence): sequence
        }
    }
}

extension LMDBSessionLedger {
    fileprivate func claim(
        _ client: String, _ session: String, cleanStart: Bool = false, expiry: UInt32 = 600,
        identity: IdentityVerdict = .authenticated, connection: ConnectionNumber? = nil
    ) async throws -> Claimed {
        let connection = connection ?? nextConnectionNumber()
        let outcome = try await claim(ClaimRequest(
            authenticationName: AuthenticationName(unchecked: client), sessionName: SessionName(unchecked: session),
            connection: connection, protocolVersion: .mqtt5, cleanStart: cleanStart,
            requestedExpiryInterval: expiry, remoteAddress: "127.0.0.1:50000", identity: identity))
        return Claimed(outcome: outcome, connection: connection)
    }

    @discardableResult
    fileprivate func release(
        _ session: String, _ connection: ConnectionNumber, reason: DisconnectReason = .clientInitiatedDisconnect,
        newExpiryInterval: UInt32? = nil
    ) async throws -> LedgerEvent? {
        try await release(ReleaseRequest(
            sessionName: SessionName(unchecked: session), connection: connection, reason: reason,
            newExpiryInterval: newExpiryInterval))
    }

    fileprivate func session(_ text: String) throws -> SessionEntry? {
        try session(SessionName(unchecked: text))
    }

    fileprivate func event(at sequence: UInt64) throws -> LedgerEvent? {
        try records(from: sequence).first?.event
    }

    fileprivate func allEvents() throws -> [LedgerEvent] {
        try records().map(\.event)
    }

    fileprivate func storedSessions() throws -> [SessionName: SessionEntry] {
        try liveSessions()
    }
}

extension LedgerStore {
    fileprivate func allEvents() throws -> [LedgerEvent] {
        try read { snapshot in
            var events: [LedgerEvent] = []
            try snapshot.forEachRecord(from: 1) { _, bytes in
                events.append(try EventRecordFormat.decode(bytes).event)
                return true
            }
            return events
        }
    }
}

/// Offsets of every occurrence of `pattern` in `bytes`.
private func occurrences(of pattern: [UInt8], in bytes: [UInt8]) -> [Int] {
    guard !pattern.isEmpty, bytes.count >= pattern.count else { return [] }
    var found: [Int] = []
    let first = pattern[0]
    var i = 0
    while i <= bytes.count - pattern.count {
        if bytes[i] == first, Array(bytes[i..<i + pattern.count]) == pattern { found.append(i) }
        i += 1
    }
    return found
}

private func littleEndian16(_ value: Int) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8)] }

/// Verifies a closed ledger directory through a read-only store.
private func verifyReadOnly(_ directory: String) throws -> VerifyReport {
    let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
    defer { store.close() }
    return try store.read { try $0.verify() }
}

// MARK: - Tests

@Suite("Session rules through the LMDB ledger")
struct SessionRulesLedgerTests {
    // MARK: R1

    @Test("R1: invalid ClientIDs are rejected as invalidSessionName and recorded", arguments: [
        "", String(repeating: "c", count: 129), "null\u{0}inside",
    ])
    func r1Rejected(_ session: String) async throws {
        try await withLedger { ledger, _ in
            let claimed = try await ledger.claim("alice", session)
            guard case .rejected(.invalidSessionName, let sequence) = claimed.outcome else {
                Issue.record("expected an invalidSessionName rejection, got \(claimed.outcome)")
                return
            }
            let event = try #require(try ledger.event(at: sequence))
            #expect(event.kind == .rejected(.invalidSessionName))
            #expect(event.sessionName.value == session)
            #expect(event.authenticationName.value == "alice")
            #expect(event.connection == claimed.connection)
            #expect(ledger.head.sequence == sequence)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 0)
            #expect(try ledger.storedSessions().isEmpty)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("R1: 128-character names are granted, also as 512 bytes of 4-byte UTF-8")
    func r1MaximumLength() async throws {
        try await withLedger { ledger, clock in
            let emoji = String(repeating: "😀", count: 128)
            #expect(emoji.utf8.count == 512)
            let ascii = String(repeating: "a", count: 128)
            let emojiClient = String(repeating: "🦊", count: 128)

            let first = try await ledger.claim("alice", emoji)
            let grant = try #require(first.grant)
            #expect(grant.sessionPresent == false)
            let other = try await ledger.claim(emojiClient, ascii)
            #expect(other.grant != nil)

            let entry = try #require(try ledger.session(emoji))
            #expect(entry.owner.value == "alice")
            #expect(entry.connection == first.connection)
            #expect(try ledger.session(ascii)?.owner.value == emojiClient)
            #expect(try ledger.storedSessions()[SessionName(unchecked: emoji)] == entry)
            let event = try #require(try ledger.event(at: grant.sequence))
            #expect(event.sessionName.value == emoji)

            // The long key also works for the expiry index and for R6.
            try await ledger.release(emoji, first.connection)
            #expect(try ledger.session(emoji)?.deadline == clock.now + 600 * second)
            #expect(try await ledger.claim(emojiClient, emoji).rejection == .ownedByAnotherClient)
            clock.advance(seconds: 601)
            let expired = try await ledger.expireDue()
            #expect(expired.map(\.sessionName.value) == [emoji])
            #expect(try ledger.session(emoji) == nil)
            #expect(try ledger.verify().isIntact)
        }
    }

    // MARK: R2 / R3

    @Test("R2: a free name is granted without a session present")
    func r2Grant() async throws {
        try await withLedger { ledger, _ in
            let claimed = try await ledger.claim("alice", "s1", expiry: 120)
            let grant = try #require(claimed.grant)
            #expect(grant == SessionGrant(
                sequence: 1, connection: claimed.connection, sessionPresent: false, expiryInterval: 120,
                replacedConnection: nil))
            let entry = try #require(try ledger.session("s1"))
            #expect(entry.state == .connected)
            #expect(entry.owner.value == "alice")
            #expect(entry.firstSequence == 1)
            #expect(try ledger.allEvents().map(\.kind) == [.connected])
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "ALICE")) == 1)
        }
    }

    @Test("R3: the cap counts connected and offline sessions; expireDue frees a place")
    func r3CapWithSweep() async throws {
        try await withLedger(policy: try policy(sessions: 3)) { ledger, clock in
            let s1 = try await ledger.claim("alice", "s1", expiry: 60)
            let s2 = try await ledger.claim("Alice", "s2", expiry: 600)
            let s3 = try await ledger.claim("ALICE", "s3", expiry: 600)
            #expect([s1, s2, s3].allSatisfy { $0.grant != nil })

            let fourth = try await ledger.claim("alice", "s4")
            #expect(fourth.rejection == .quotaExceeded)
            #expect(try ledger.event(at: fourth.sequence)?.kind == .rejected(.quotaExceeded))
            #expect(try ledger.session("s4") == nil)

            // Offline but unexpired sessions still count.
            try await ledger.release("s1", s1.connection, reason: .connectionLost)
            #expect(try ledger.session("s1")?.deadline == clock.now + 60 * second)
            #expect(try await ledger.claim("alice", "s4").rejection == .quotaExceeded)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 3)

            clock.advance(seconds: 61)
            let expired = try await ledger.expireDue()
            #expect(expired.map(\.sessionName.value) == ["s1"])
            #expect(expired.first?.kind == .expired(.sessionExpired))
            #expect(expired.first?.authenticationName.value == "alice")
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 2)

            let granted = try await ledger.claim("alice", "s4")
            #expect(granted.grant?.sessionPresent == false)
            #expect(try await ledger.claim("alice", "s5").rejection == .quotaExceeded)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("R3: reclaiming one's own expired session name is lazily expired at claim time")
    func r3LazyExpirySameName() async throws {
        try await withLedger(policy: try policy(sessions: 3)) { ledger, clock in
            let s1 = try await ledger.claim("alice", "s1", expiry: 60)
            _ = try await ledger.claim("alice", "s2")
            _ = try await ledger.claim("alice", "s3")
            try await ledger.release("s1", s1.connection)
            clock.advance(seconds: 60)  // exactly at the deadline

            let again = try await ledger.claim("alice", "s1")
            let grant = try #require(again.grant)
            #expect(grant.sessionPresent == false, "the old session expired: nothing to resume")
            let ended = try #require(try ledger.event(at: grant.sequence - 1))
            #expect(ended.kind == .expired(.sessionExpired))
            #expect(ended.sessionName.value == "s1")
            #expect(ended.connection == s1.connection)
            #expect(try ledger.session("s1")?.firstSequence == grant.sequence)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 3)
            #expect(try ledger.verify().isIntact)
        }
    }

    /// An expired session is not live (DESIGN §1 R2, "A session that outlives its expiry while
    /// disconnected is ended"), whether or not the sweep has recorded its end yet.
    @Test("R3: a session past its deadline does not count toward the cap before the sweep")
    func r3LazyExpiryOtherName() async throws {
        try await withLedger(policy: try policy(sessions: 3)) { ledger, clock in
            let s1 = try await ledger.claim("alice", "s1", expiry: 60)
            _ = try await ledger.claim("alice", "s2")
            _ = try await ledger.claim("alice", "s3")
            try await ledger.release("s1", s1.connection)
            #expect(try await ledger.claim("alice", "s4").rejection == .quotaExceeded)
            clock.advance(seconds: 61)

            // No expireDue(): s1 is past its deadline, so alice holds only two live sessions.
            let fourth = try await ledger.claim("alice", "s4")
            #expect(fourth.grant != nil, "s1 expired 1 s ago, yet it still counts against alice's cap: \(fourth.outcome)")
            #expect(try ledger.verify().isIntact)
        }
    }

    // MARK: R4

    @Test("R4: takeover by the same identity, also differing only by case", arguments: ["Device-1", "device-1"])
    func r4Takeover(_ requester: String) async throws {
        try await withLedger { ledger, _ in
            let old = try await ledger.claim("Device-1", "sensor", expiry: 600)
            let oldGrant = try #require(old.grant)
            let new = try await ledger.claim(requester, "sensor", expiry: 300)
            let grant = try #require(new.grant)
            #expect(grant.replacedConnection == old.connection)
            #expect(grant.sessionPresent == true)
            #expect(grant.expiryInterval == 300)
            #expect(grant.sequence == oldGrant.sequence + 2)

            let events = try ledger.allEvents()
            #expect(events.map(\.kind) == [.connected, .disconnected(.sessionTakenOver), .connected])
            #expect(events[1].connection == old.connection)
            #expect(events[1].authenticationName.value == "Device-1")
            #expect(events[2].connection == new.connection)
            #expect(events[2].authenticationName.value == requester)

            let entry = try #require(try ledger.session("sensor"))
            #expect(entry.state == .connected)
            #expect(entry.connection == new.connection)
            #expect(entry.owner.value == requester)
            #expect(entry.firstSequence == oldGrant.sequence, "the session continues")
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "DEVICE-1")) == 1)

            // The old connection's late end is not recorded and changes nothing.
            let head = ledger.head
            #expect(try await ledger.release("sensor", old.connection, reason: .connectionLost) == nil)
            #expect(ledger.head == head)
            #expect(try ledger.session("sensor") == entry)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("R4: no session present after takeover with Clean Start or from a session with expiry 0")
    func r4SessionPresent() async throws {
        try await withLedger { ledger, _ in
            let a = try await ledger.claim("dev", "clean", expiry: 600)
            let cleanTakeover = try await ledger.claim("DEV", "clean", cleanStart: true)
            #expect(cleanTakeover.grant?.sessionPresent == false)
            #expect(cleanTakeover.grant?.replacedConnection == a.connection)
            #expect(try ledger.session("clean")?.firstSequence == cleanTakeover.sequence)

            let b = try await ledger.claim("dev", "ephemeral", expiry: 0)
            let takeover = try await ledger.claim("dev", "ephemeral", expiry: 0)
            #expect(takeover.grant?.sessionPresent == false)
            #expect(takeover.grant?.replacedConnection == b.connection)
            #expect(try ledger.event(at: takeover.sequence - 1)?.kind == .disconnected(.sessionTakenOver))
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "dev")) == 2)
            #expect(try ledger.verify().isIntact)
        }
    }

    // MARK: R5

    @Test("R5: resuming a disconnected, unexpired session; Clean Start discards it")
    func r5Resume() async throws {
        try await withLedger { ledger, clock in
            let first = try await ledger.claim("alice", "s1", expiry: 600)
            try await ledger.release("s1", first.connection)
            clock.advance(seconds: 599)
            let resumed = try await ledger.claim("Alice", "s1", expiry: 600)
            let grant = try #require(resumed.grant)
            #expect(grant.sessionPresent == true)
            #expect(grant.replacedConnection == nil)
            let entry = try #require(try ledger.session("s1"))
            #expect(entry.state == .connected)
            #expect(entry.connection == resumed.connection)
            #expect(entry.firstSequence == first.sequence)

            try await ledger.release("s1", resumed.connection)
            let clean = try await ledger.claim("alice", "s1", cleanStart: true)
            #expect(clean.grant?.sessionPresent == false)
            #expect(clean.grant?.replacedConnection == nil)
            #expect(try ledger.session("s1")?.firstSequence == clean.sequence)
            #expect(try ledger.allEvents().map(\.kind) == [
                .connected, .disconnected(.clientInitiatedDisconnect), .connected,
                .disconnected(.clientInitiatedDisconnect), .connected,
            ])
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 1)
        }
    }

    // MARK: R6

    @Test("R6: another identity is rejected while the owner is connected or offline; granted after expiry",
          arguments: [false, true])
    func r6OwnedByAnother(_ sweep: Bool) async throws {
        try await withLedger { ledger, clock in
            let owner = try await ledger.claim("bob", "shared", expiry: 30)
            let connected = try #require(try ledger.session("shared"))

            let whileConnected = try await ledger.claim("alice", "shared")
            #expect(whileConnected.rejection == .ownedByAnotherClient)
            let rejected = try #require(try ledger.event(at: whileConnected.sequence))
            #expect(rejected.kind == .rejected(.ownedByAnotherClient))
            #expect(rejected.authenticationName.value == "alice")
            #expect(rejected.sessionName.value == "shared")
            #expect(try ledger.session("shared") == connected, "bob's session is untouched")
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 0)

            try await ledger.release("shared", owner.connection, reason: .connectionLost)
            let offline = try #require(try ledger.session("shared"))
            clock.advance(seconds: 29)
            #expect(try await ledger.claim("alice", "shared").rejection == .ownedByAnotherClient)
            #expect(try ledger.session("shared") == offline)

            clock.advance(seconds: 1)
            if sweep {
                #expect(try await ledger.expireDue().map(\.sessionName.value) == ["shared"])
            }
            let after = try await ledger.claim("alice", "shared")
            let grant = try #require(after.grant)
            #expect(grant.sessionPresent == false)
            let previous = try #require(try ledger.event(at: grant.sequence - 1))
            #expect(previous.kind == .expired(.sessionExpired))
            #expect(previous.authenticationName.value == "bob")
            #expect(try ledger.session("shared")?.owner.value == "alice")
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "bob")) == 0)
            #expect(try ledger.verify().isIntact)
        }
    }

    // MARK: R7

    @Test("R7: identity verdicts become the matching rejections and are recorded", arguments: [
        (IdentityVerdict.unknownClient, RejectionReason.unknownClient),
        (.clientDisabled, .clientDisabled),
        (.authenticationFailed, .authenticationFailed),
    ])
    func r7(_ verdict: IdentityVerdict, _ reason: RejectionReason) async throws {
        try await withLedger { ledger, _ in
            let claimed = try await ledger.claim("mallory", "s1", identity: verdict)
            #expect(claimed.rejection == reason)
            let event = try #require(try ledger.event(at: claimed.sequence))
            #expect(event.kind == .rejected(reason))
            #expect(event.authenticationName.value == "mallory")
            #expect(event.sessionName.value == "s1")
            #expect(event.connection == claimed.connection)
            #expect(try ledger.session("s1") == nil)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "mallory")) == 0)
            // A rejected identity does not disturb a session held by someone else either.
            _ = try await ledger.claim("bob", "held")
            let held = try ledger.session("held")
            #expect(try await ledger.claim("bob", "held", identity: verdict).rejection == reason)
            #expect(try ledger.session("held") == held)
            #expect(try ledger.verify().isIntact)
        }
    }

    // MARK: R8

    @Test("R8: when the map is full the claim throws, nothing is granted, and the ledger stays intact")
    func r8MapFull() async throws {
        try await withScratchDirectory("session-rules") { directory in
            let ledger = try LMDBSessionLedger(
                directory: directory, policy: .default, mapSize: 256 << 10,
                clock: ManualClock().ledgerClock)
            var granted: [(String, ConnectionNumber)] = []
            var failure: LedgerError?
            var failedName = ""
            let padding = String(repeating: "x", count: 100)
            for i in 0..<20_000 {
                let name = "session-\(i)-\(padding)"
                do {
                    let claimed = try await ledger.claim("client-\(i)-\(padding)", name)
                    let grant = try #require(claimed.grant)
                    granted.append((name, grant.connection))
                } catch let error as LedgerError {
                    failure = error
                    failedName = name
                    break
                }
            }
            let error = try #require(failure, "the map never filled")
            #expect(error.isMapFull, "\(error)")
            #expect(granted.count > 10)

            #expect(try ledger.session(failedName) == nil)
            for (name, connection) in granted {
                let entry = try ledger.session(name)
                #expect(entry?.connection == connection, "\(name)")
                #expect(entry?.state == .connected)
            }
            #expect(ledger.head.sequence == UInt64(granted.count))
            let live = try ledger.verify()
            #expect(live.isIntact, "\(String(describing: live.problem))")
            #expect(live.events == UInt64(granted.count))

            // Trying again must not grant what cannot be stored.
            do {
                let retry = try await ledger.claim("late", failedName)
                if retry.grant != nil { #expect(try ledger.session(failedName) != nil) }
            } catch {
                #expect((error as? LedgerError)?.isMapFull == true, "\(error)")
            }
            let head = ledger.head
            ledger.close()

            let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
            defer { store.close() }
            let report = try store.read { try $0.verify() }
            #expect(report.isIntact, "\(String(describing: report.problem))")
            #expect(report.head == head)
            for (name, connection) in granted {
                #expect(try store.read { try $0.session(SessionName(unchecked: name)) }?.connection == connection)
            }
        }
    }

    // MARK: Expiry interval

    @Test("The requested expiry interval is capped by the policy")
    func expiryCapped() async throws {
        try await withLedger(policy: try policy(hours: 1)) { ledger, clock in
            let claimed = try await ledger.claim("alice", "s1", expiry: UInt32.max)
            #expect(claimed.grant?.expiryInterval == 3600)
            #expect(try ledger.event(at: claimed.sequence)?.expiryInterval == 3600)
            #expect(try ledger.session("s1")?.expiryInterval == 3600)
            let released = try await ledger.release("s1", claimed.connection)
            #expect(released?.expiryInterval == 3600)
            #expect(try ledger.session("s1")?.deadline == clock.now + 3600 * second)
        }
        try await withLedger(policy: try policy(hours: 8)) { ledger, _ in
            let capped = try await ledger.claim("alice", "s1", expiry: UInt32.max)
            #expect(capped.grant?.expiryInterval == 28_800)
            let short = try await ledger.claim("alice", "s2", expiry: 5)
            #expect(short.grant?.expiryInterval == 5)
        }
    }

    @Test("A session with expiry 0 ends with its connection: the name is free at once")
    func expiryZeroFreesName() async throws {
        try await withLedger { ledger, _ in
            let claimed = try await ledger.claim("alice", "s1", expiry: 0)
            #expect(claimed.grant?.expiryInterval == 0)
            let released = try #require(try await ledger.release("s1", claimed.connection))
            #expect(released.kind == .disconnected(.clientInitiatedDisconnect))
            #expect(released.expiryInterval == 0)
            #expect(try ledger.session("s1") == nil)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 0)

            let other = try await ledger.claim("bob", "s1")
            #expect(other.grant?.sessionPresent == false)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("A release may change the expiry interval (capped), but not raise it from 0")
    func releaseChangesExpiry() async throws {
        try await withLedger { ledger, clock in
            let a = try await ledger.claim("alice", "shorter", expiry: 600)
            let event = try #require(try await ledger.release("shorter", a.connection, newExpiryInterval: 30))
            #expect(event.expiryInterval == 30)
            let entry = try #require(try ledger.session("shorter"))
            #expect(entry.deadline == clock.now + 30 * second)
            #expect(entry.expiryInterval == 30)

            let b = try await ledger.claim("alice", "longer", expiry: 10)
            try await ledger.release("longer", b.connection, newExpiryInterval: .max)
            #expect(try ledger.session("longer")?.deadline == clock.now + 3600 * second)

            let c = try await ledger.claim("alice", "ended", expiry: 600)
            try await ledger.release("ended", c.connection, newExpiryInterval: 0)
            #expect(try ledger.session("ended") == nil)

            let d = try await ledger.claim("alice", "zero", expiry: 0)
            let zero = try #require(try await ledger.release("zero", d.connection, newExpiryInterval: 600))
            #expect(zero.expiryInterval == 0, "raising from 0 is ignored")
            #expect(try ledger.session("zero") == nil)

            clock.advance(seconds: 30)
            #expect(try await ledger.expireDue().map(\.sessionName.value) == ["shorter"])
            #expect(try ledger.session("longer") != nil)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("expireDue expires at most `limit` sessions, oldest deadline first")
    func expireDueLimit() async throws {
        try await withLedger { ledger, clock in
            for (i, expiry) in [30, 10, 20].enumerated() {
                let claimed = try await ledger.claim("c\(i)", "s\(i)", expiry: UInt32(expiry))
                try await ledger.release("s\(i)", claimed.connection)
            }
            clock.advance(seconds: 31)
            #expect(try await ledger.expireDue(limit: 2).map(\.sessionName.value) == ["s1", "s2"])
            #expect(try await ledger.expireDue(limit: 2).map(\.sessionName.value) == ["s0"])
            #expect(try await ledger.expireDue().isEmpty)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("expireDue(limit: 0) expires nothing")
    func expireDueLimitZero() async throws {
        try await withLedger { ledger, clock in
            let claimed = try await ledger.claim("alice", "s1", expiry: 10)
            try await ledger.release("s1", claimed.connection)
            clock.advance(seconds: 11)
            let expired = try await ledger.expireDue(limit: 0)
            #expect(expired.isEmpty, "a limit of 0 still expired \(expired.map(\.sessionName.value))")
        }
    }

    // MARK: Concurrency

    @Test("50 identities race for one name: exactly one wins")
    func raceOfIdentities() async throws {
        try await withLedger { ledger, _ in
            let results = try await withThrowingTaskGroup(of: (Int, Claimed).self) { group in
                for i in 0..<50 {
                    group.addTask { (i, try await ledger.claim("client-\(i)", "contested")) }
                }
                var results: [(Int, Claimed)] = []
                for try await result in group { results.append(result) }
                return results
            }
            let winners = results.filter { $0.1.grant != nil }
            let losers = results.filter { $0.1.rejection == .ownedByAnotherClient }
            #expect(winners.count == 1)
            #expect(losers.count == 49)
            let winner = try #require(winners.first)
            let entry = try #require(try ledger.session("contested"))
            #expect(entry.owner.value == "client-\(winner.0)")
            #expect(entry.connection == winner.1.connection)
            #expect(ledger.head.sequence == 50)
            let sequences = Set(results.map(\.1.sequence))
            #expect(sequences == Set(1...50))
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("20 connections of one identity race: every one is granted, each replacing the one before")
    func raceOfOneIdentity() async throws {
        try await withLedger { ledger, _ in
            let results = try await withThrowingTaskGroup(of: Claimed.self) { group in
                for i in 0..<20 {
                    group.addTask { try await ledger.claim(i.isMultiple(of: 2) ? "Device" : "device", "one") }
                }
                var results: [Claimed] = []
                for try await result in group { results.append(result) }
                return results
            }
            let grants = results.compactMap(\.grant).sorted { $0.sequence < $1.sequence }
            #expect(grants.count == 20)
            #expect(grants.first?.replacedConnection == nil)
            for (previous, next) in zip(grants, grants.dropFirst()) {
                #expect(next.replacedConnection == previous.connection)
                #expect(next.sessionPresent == true)
            }
            let last = try #require(grants.last)
            let stored = try ledger.storedSessions()
            #expect(stored.count == 1)
            #expect(stored[SessionName(unchecked: "one")]?.state == .connected)
            #expect(stored[SessionName(unchecked: "one")]?.connection == last.connection)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "DEVICE")) == 1)
            let events = try ledger.allEvents()
            #expect(events.filter { $0.kind == .connected }.count == 20)
            #expect(events.filter { $0.kind == .disconnected(.sessionTakenOver) }.count == 19)
            #expect(try ledger.verify().isIntact)
        }
    }

    // MARK: Restart

    @Test("Restart: recovery disconnects, expires, and the log continues densely")
    func restart() async throws {
        try await withScratchDirectory("session-rules") { directory in
            let clock = ManualClock()
            var ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock)
            #expect(ledger.recovery.disconnected.isEmpty && ledger.recovery.expired.isEmpty)

            let online = try await ledger.claim("alice", "online", expiry: 600)
            let ephemeral = try await ledger.claim("bob", "ephemeral", expiry: 0)
            let shortOffline = try await ledger.claim("carol", "short-offline", expiry: 10)
            try await ledger.release("short-offline", shortOffline.connection)
            let longOffline = try await ledger.claim("dave", "long-offline", expiry: 3600)
            try await ledger.release("long-offline", longOffline.connection)
            let longDeadline = try #require(try ledger.session("long-offline")?.deadline)
            _ = try await ledger.claim("eve", "online", expiry: 600)  // rejected, still a used connection number
            let highestUsed = try ledger.allEvents().map(\.connection).max() ?? 0
            let headBefore = ledger.head
            ledger.close()

            clock.advance(seconds: 60)
            ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock)
            defer { ledger.close() }
            let recovery = ledger.recovery

            #expect(recovery.expired.map(\.sessionName.value) == ["short-offline"])
            #expect(recovery.expired.first?.kind == .expired(.expiredWhileBrokerDown))
            #expect(recovery.expired.first?.authenticationName.value == "carol")
            #expect(Set(recovery.disconnected.map(\.sessionName.value)) == ["online", "ephemeral"])
            #expect(recovery.disconnected.allSatisfy { $0.kind == .disconnected(.brokerRestart) })
            #expect(recovery.disconnected.first { $0.sessionName.value == "online" }?.connection == online.connection)
            #expect(recovery.disconnected.first { $0.sessionName.value == "ephemeral" }?.connection == ephemeral.connection)
            let recorded = (recovery.expired + recovery.disconnected).map(\.sequence).sorted()
            #expect(recorded == Array(headBefore.sequence + 1...headBefore.sequence + 3))
            #expect(recovery.head.sequence == headBefore.sequence + 3)
            #expect(ledger.head == recovery.head)

            // The expiry of a session found connected runs from the restart.
            let onlineEntry = try #require(try ledger.session("online"))
            #expect(onlineEntry.deadline == clock.now + 600 * second)
            #expect(onlineEntry.owner.value == "alice")
            #expect(try ledger.session("ephemeral") == nil)
            #expect(try ledger.session("short-offline") == nil)
            #expect(try ledger.session("long-offline")?.deadline == longDeadline)

            // The stored projection is exactly what the log implies.
            let replayed = try ledger.replay(through: .end)
            #expect(try ledger.storedSessions() == replayed.sessions)
            #expect(replayed.lastSequence == recovery.head.sequence)
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")

            // Sequence numbers stay dense and connection numbers never repeat.
            let next = ledger.nextConnectionNumber()
            #expect(next > highestUsed)
            let resumed = try await ledger.claim("alice", "online", connection: next)
            #expect(resumed.grant?.sessionPresent == true)
            #expect(resumed.sequence == recovery.head.sequence + 1)
            #expect(try ledger.allEvents().map(\.sequence) == Array(1...resumed.sequence))
            #expect(ledger.nextConnectionNumber() > next)
        }
    }

    @Test("Restart: connection numbers handed out and recorded before are never reused")
    func restartConnectionNumbers() async throws {
        try await withScratchDirectory("session-rules") { directory in
            var ledger = try LMDBSessionLedger(directory: directory, clock: ManualClock().ledgerClock)
            var used: [ConnectionNumber] = []
            for i in 0..<5 { used.append(try await ledger.claim("c\(i)", "s\(i)").connection) }
            // A number chosen by the front beyond the counter must also be respected.
            used.append(try await ledger.claim("big", "big", connection: 1_000).connection)
            ledger.close()
            ledger = try LMDBSessionLedger(directory: directory, clock: ManualClock().ledgerClock)
            defer { ledger.close() }
            #expect(ledger.nextConnectionNumber() > used.max()!)
        }
    }

    // MARK: Replay

    @Test("Replay through a sequence number or a time gives the state at that point")
    func replay() async throws {
        try await withLedger { ledger, clock in
            let t1 = clock.now
            let alice = try await ledger.claim("alice", "s1", expiry: 0)  // seq 1
            clock.advance(seconds: 10)
            try await ledger.release("s1", alice.connection)  // seq 2 at t1+10
            clock.advance(seconds: 10)
            let bob = try await ledger.claim("bob", "s1", expiry: 60)  // seq 3 at t1+20
            #expect(bob.sequence == 3)

            let name = SessionName(unchecked: "s1")
            #expect(try ledger.replay(through: .sequence(1)).sessions[name]?.owner.value == "alice")
            #expect(try ledger.replay(through: .sequence(2)).sessions[name] == nil)
            #expect(try ledger.replay(through: .sequence(3)).sessions[name]?.owner.value == "bob")
            #expect(try ledger.replay(through: .sequence(1)).lastSequence == 1)
            #expect(try ledger.replay(through: .end).sessions[name]?.owner.value == "bob")
            #expect(try ledger.session(name)?.owner.value == "bob")

            #expect(try ledger.replay(through: .time(t1 - 1)).sessions.isEmpty)
            #expect(try ledger.replay(through: .time(t1)).sessions[name]?.owner.value == "alice")
            #expect(try ledger.replay(through: .time(t1 + 5 * second)).sessions[name]?.connection == alice.connection)
            #expect(try ledger.replay(through: .time(t1 + 10 * second)).sessions[name] == nil)
            #expect(try ledger.replay(through: .time(t1 + 20 * second)).sessions[name]?.owner.value == "bob")
            #expect(try ledger.replay(through: .time(t1 + 15 * second)).lastSequence == 2)
        }
    }

    // MARK: Tamper evidence

    @Test("Verify finds an edited log record at its sequence number")
    func tamperedLogRecord() async throws {
        try await withScratchDirectory("session-rules") { directory in
            let marker = "TamperTarget-0123456"
            #expect(marker.count == 20)
            let ledger = try LMDBSessionLedger(directory: directory, clock: ManualClock().ledgerClock)
            _ = try await ledger.claim("bob", "before")
            _ = try await ledger.claim("bob", "held")
            // Rejected: the marker name is in this one log record only, not in the projection.
            let rejected = try await ledger.claim("mallory", marker, identity: .authenticationFailed)
            #expect(rejected.rejection == .authenticationFailed)
            for i in 0..<5 { _ = try await ledger.claim("after-\(i)", "after-\(i)") }
            #expect(try ledger.verify().isIntact)
            ledger.close()
            #expect(try verifyReadOnly(directory).isIntact)

            let file = directory + "/data.mdb"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            let found = occurrences(of: Array(marker.utf8), in: bytes)
            try #require(!found.isEmpty, "the marker is not in the data file")
            // Stale copies of the page may survive in free pages; edit them all.
            for offset in found { bytes[offset] = UInt8(ascii: "t") }
            try Data(bytes).write(to: URL(fileURLWithPath: file))

            let report = try verifyReadOnly(directory)
            #expect(!report.isIntact)
            #expect(report.problem == .hashMismatch(sequence: rejected.sequence))
            #expect(report.problem?.firstBadSequence == rejected.sequence)
        }
    }

    @Test("Verify finds a stored projection entry that disagrees with the log")
    func tamperedProjection() async throws {
        try await withScratchDirectory("session-rules") { directory in
            let owner = "projection-owner"
            let session = "ProjectionTarget-987"
            let ledger = try LMDBSessionLedger(directory: directory, clock: ManualClock().ledgerClock)
            _ = try await ledger.claim("x", "before")
            let claimed = try await ledger.claim(owner, session)
            #expect(claimed.grant != nil)
            _ = try await ledger.claim("y", "after")
            ledger.close()

            // A session entry holds [owner length][name length] owner name; a log record has
            // the high bytes of its connection number there instead, so this finds entries only.
            let pattern = littleEndian16(owner.utf8.count) + littleEndian16(session.utf8.count)
                + Array(owner.utf8) + Array(session.utf8)
            let file = directory + "/data.mdb"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            let found = occurrences(of: pattern, in: bytes)
            try #require(!found.isEmpty, "the session entry is not in the data file")
            for offset in found where offset >= 48 {
                let entryStart = offset - 48
                bytes[entryStart + 8] &+= 1  // the connection number's low byte
            }
            try Data(bytes).write(to: URL(fileURLWithPath: file))

            let report = try verifyReadOnly(directory)
            #expect(!report.isIntact)
            guard case .projectionMismatch = report.problem else {
                Issue.record("expected a projection mismatch, got \(String(describing: report.problem))")
                return
            }
            #expect(report.problem?.firstBadSequence == nil)
        }
    }
}

/// `endSession(_:reason:)`: the broker's queue for a session overflowed and the session ends
/// at once, as Event Grid ends it, whatever its state; the log still replays to the projection.
@Suite("Ending a session for overflow")
struct SessionOverflowLedgerTests {
    @Test func aConnectedSessionLosesItsConnectionThenItself() async throws {
        try await withLedger { ledger, _ in
            let claimed = try await ledger.claim("alice", "s1", expiry: 600)
            let events = try await ledger.endSession(SessionName(unchecked: "s1"), reason: .sessionOverflow)
            #expect(events.map(\.kind) == [.disconnected(.sessionOverflow), .expired(.sessionOverflow)])
            #expect(events.allSatisfy { $0.connection == claimed.connection && $0.authenticationName.value == "alice" })
            #expect(try ledger.session("s1") == nil)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 0)
            // The connection's own end comes later and finds nothing to record.
            #expect(try await ledger.release("s1", claimed.connection, reason: .serverInitiatedDisconnect) == nil)
            // The name is free for anyone now.
            #expect(try await ledger.claim("bob", "s1").grant?.sessionPresent == false)
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test func aDetachedSessionExpiresAndOneWithoutExpiryEndsWithItsConnection() async throws {
        try await withLedger { ledger, _ in
            let offline = try await ledger.claim("alice", "offline", expiry: 600)
            try await ledger.release("offline", offline.connection)
            #expect(try await ledger.endSession(SessionName(unchecked: "offline"), reason: .sessionOverflow).map(\.kind)
                == [.expired(.sessionOverflow)])
            _ = try await ledger.claim("alice", "clean", cleanStart: true, expiry: 0)
            #expect(try await ledger.endSession(SessionName(unchecked: "clean"), reason: .sessionOverflow).map(\.kind)
                == [.disconnected(.sessionOverflow)])
            #expect(try await ledger.endSession(SessionName(unchecked: "never"), reason: .sessionOverflow).isEmpty)
            #expect(try ledger.liveSessionCount(of: AuthenticationName(unchecked: "alice")) == 0)
            #expect(try ledger.verify().isIntact)
        }
    }
}

// MARK: - A map that grows, and its reserve

/// Like `withScratchDirectory`, on a tmpfs where there is one: these tests commit thousands
/// of times to fill a map, and on ext4 their fsyncs would hold up those of the tests beside
/// them. What they test (the map, its reserve, the archive) does not depend on the disk.
func withMemoryScratchDirectory<R>(_ label: String, _ body: (String) async throws -> R) async throws -> R {
    guard FileManager.default.fileExists(atPath: "/dev/shm") else { return try await withScratchDirectory(label, body) }
    let directory = "/dev/shm/custody-\(label)-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

@Suite("Ledger map")
struct LedgerMapTests {
    private static let padding = String(repeating: "x", count: 100)

    /// Claims connected sessions until the ledger refuses one for want of room; answers the
    /// granted ones (name, connection).
    private static func fill(_ ledger: LMDBSessionLedger) async throws -> (granted: [(String, ConnectionNumber)], refusal: LedgerError) {
        var granted: [(String, ConnectionNumber)] = []
        for i in 0..<200_000 {
            let name = "session-\(i)-\(padding)"
            do {
                let claimed = try await ledger.claim("client-\(i)-\(padding)", name)
                let grant = try #require(claimed.grant)
                granted.append((name, grant.connection))
            } catch let error as LedgerError {
                return (granted, error)
            }
        }
        throw TestFailure.unexpected("the map never filled")
    }

    @Test("The map starts small and grows on demand up to its maximum, without a failed claim")
    func mapGrows() async throws {
        try await withMemoryScratchDirectory("ledger-map") { directory in
            let ledger = try LMDBSessionLedger(directory: directory, mapSize: 64 << 20, clock: ManualClock().ledgerClock)
            defer { ledger.close() }
            let initial = try #require(ledger.mapUsage)
            #expect(initial.mappedBytes == 8 << 20)
            #expect(initial.maximumBytes == 64 << 20)
            // About 20,000 claims of ~700 bytes of log and projection each: past 8 MiB.
            let requests = (0..<20_000).map { i in
                ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "client-\(i)-\(Self.padding)"),
                    sessionName: SessionName(unchecked: "session-\(i)-\(Self.padding)"),
                    connection: ledger.nextConnectionNumber(), protocolVersion: .mqtt5, cleanStart: false,
                    requestedExpiryInterval: 600, remoteAddress: "127.0.0.1:50000", identity: .authenticated)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for chunk in stride(from: 0, to: requests.count, by: 1000) {
                    let part = Array(requests[chunk..<min(chunk + 1000, requests.count)])
                    group.addTask {
                        for request in part { _ = try await ledger.claim(request) }
                    }
                }
                try await group.waitForAll()
            }
            let grown = try #require(ledger.mapUsage)
            #expect(grown.mappedBytes > 8 << 20, "\(grown)")
            #expect(grown.mappedBytes <= 64 << 20)
            #expect(grown.usedBytes > 8 << 20, "\(grown)")
            #expect(ledger.head.sequence == 20_000)
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")
        }
    }

    @Test("In the reserve, CONNECTs are refused as a full store while disconnects are all recorded")
    func disconnectsWhileFullAreRecorded() async throws {
        try await withMemoryScratchDirectory("ledger-map") { directory in
            let ledger = try LMDBSessionLedger(
                directory: directory, mapSize: 2 << 20, mapReserve: 512 << 10, clock: ManualClock().ledgerClock)
            defer { ledger.close() }
            let (granted, refusal) = try await Self.fill(ledger)
            #expect(refusal.isMapFull, "\(refusal)")
            #expect("\(refusal)".contains("reserve"), "\(refusal)")
            #expect(granted.count > 100)
            let usage = try #require(ledger.mapUsage)
            #expect(usage.isInReserve, "\(usage)")
            // Still refused: nothing granted that would eat the reserve.
            await #expect(throws: LedgerError.self) { try await ledger.claim("late", "late-session") }
            #expect(try ledger.session("late-session") == nil)

            // Every disconnect is recorded, into the reserve.
            for (name, connection) in granted {
                let event = try await ledger.release(name, connection)
                #expect(event?.kind == .disconnected(.clientInitiatedDisconnect), "\(name)")
                #expect(try ledger.session(name)?.state.isDisconnected == true)
            }
            // Sessions ending (as the broker's overflow ends them) are recorded too.
            for (name, _) in granted.prefix(20) {
                let ended = try await ledger.endSession(SessionName(unchecked: name), reason: .sessionOverflow)
                #expect(ended.count == 1, "\(name)")
            }
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")
            #expect(report.events == UInt64(2 * granted.count + 20))
        }
    }

    @Test("A start on a full ledger recovers into the reserve, refuses CONNECTs and records disconnects")
    func startOnAFullLedger() async throws {
        // The same maximum: recovery needs pages for a disconnect of every session.
        try await Self.startOnAFullLedger(reopenedWith: 2 << 20) { _ in }
    }

    @Test("A start with the maximum lowered below the stored data recovers, refuses CONNECTs and records ends")
    func startBelowTheStoredData() async throws {
        // Half the maximum the data was written with: nothing is left of the reserve.
        try await Self.startOnAFullLedger(reopenedWith: 1 << 20) { ledger in
            let usage = try #require(ledger.mapUsage)
            #expect(usage.isAboveConfiguredMaximum, "\(usage)")
            #expect(usage.configuredMaximumBytes == 1 << 20)
            #expect(usage.maximumBytes >= usage.usedBytes + (512 << 10) - (1 << 20), "\(usage)")
        }
    }

    /// Fills a 2 MiB ledger with connected sessions, stops it as a crash would, and opens it
    /// again with `maximum`: recovery records every restart disconnect, a claim is refused
    /// for want of room, the old sessions still expire, and the log verifies.
    private static func startOnAFullLedger(
        reopenedWith maximum: Int, _ check: (LMDBSessionLedger) throws -> Void
    ) async throws {
        try await withMemoryScratchDirectory("ledger-map") { directory in
            let clock = ManualClock()
            var granted: [(String, ConnectionNumber)] = []
            do {
                let ledger = try LMDBSessionLedger(
                    directory: directory, mapSize: 2 << 20, mapReserve: 512 << 10, clock: clock.ledgerClock)
                (granted, _) = try await Self.fill(ledger)
                // Stopped with every session connected, as a crash leaves them.
                ledger.close()
            }
            let ledger = try LMDBSessionLedger(
                directory: directory, mapSize: maximum, mapReserve: 512 << 10, clock: clock.ledgerClock)
            defer { ledger.close() }
            try check(ledger)
            #expect(ledger.recovery.disconnected.count == granted.count)
            #expect(try ledger.liveSessions().values.allSatisfy { !$0.isConnected })
            do {
                _ = try await ledger.claim("new", "new-session")
                Issue.record("a claim was granted from the reserve")
            } catch let error as LedgerError {
                #expect(error.isMapFull, "\(error)")
            }
            // The old sessions can still end (their expiries are recorded).
            clock.advance(seconds: 601)
            let expired = try await ledger.expireDue(limit: 100_000)
            #expect(expired.count == granted.count)
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")
        }
    }
}

extension SessionEntry.State {
    fileprivate var isDisconnected: Bool {
        if case .disconnected = self { return true }
        return false
    }
}

// MARK: - Checkpoints

@Suite("Checkpoints")
struct CheckpointTests {
    /// Claims and releases `cycles` sessions of a few clients, some left connected.
    private static func churn(_ ledger: LMDBSessionLedger, cycles: Int, prefix: String = "s") async throws {
        for i in 0..<cycles {
            let claimed = try await ledger.claim("client-\(i % 7)", "\(prefix)-\(i % 13)", expiry: UInt32(i % 3) * 300)
            if let grant = claimed.grant, i % 5 != 0 { try await ledger.release("\(prefix)-\(i % 13)", grant.connection) }
        }
    }

    @Test("Every N records a checkpoint is written with the projection's digest and counts, each true to a replay; verify proves the newest")
    func checkpointsAreWrittenAndVerified() async throws {
        try await withMemoryScratchDirectory("checkpoints") { directory in
            let clock = ManualClock()
            let ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: 10)
            defer { ledger.close() }
            try await Self.churn(ledger, cycles: 60)
            let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
            defer { store.close() }
            let checkpoints = try store.read { snapshot -> [Checkpoint] in
                var found: [Checkpoint] = []
                for sequence in 1...ledger.head.sequence {
                    if let checkpoint = try snapshot.checkpoint(at: sequence) { found.append(checkpoint) }
                }
                return found
            }
            #expect(checkpoints.count >= Int(ledger.head.sequence / 11) - 1 && checkpoints.count >= 5, "\(checkpoints.count)")
            var previous: UInt64 = 0
            for checkpoint in checkpoints {
                #expect(checkpoint.previousCheckpoint == previous)
                // At most N records after the one before, and no fewer than N.
                #expect(checkpoint.sequence - previous >= 11 || previous == 0)
                previous = checkpoint.sequence
                // The digest describes the projection replayed through the records before it.
                let projection = try ledger.replay(through: .sequence(checkpoint.sequence - 1))
                #expect(checkpoint.digest == ProjectionDigest.of(projection))
                #expect(checkpoint.liveSessions == UInt64(projection.sessions.count))
            }
            #expect(try store.read { try $0.lastCheckpoint() } == previous)
            // Events are still dense around the checkpoints, and records() skips them.
            #expect(try ledger.records().count == Int(ledger.head.sequence) - checkpoints.count)
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")
            // The stored running digest is the digest of the stored projection.
            let stored = try store.read { try $0.storedDigest() }
            #expect(stored == ProjectionDigest.of(try ledger.replay(through: .end)))
        }
    }

    @Test("Recovery checks the log from the newest checkpoint, and refuses a tail that does not chain")
    func recoveryStartsFromTheNewestCheckpoint() async throws {
        try await withMemoryScratchDirectory("checkpoints") { directory in
            let clock = ManualClock()
            var last: UInt64 = 0
            do {
                let ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: 25)
                try await Self.churn(ledger, cycles: 40)
                ledger.close()
                let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
                last = try store.read { try $0.lastCheckpoint() }
                store.close()
            }
            #expect(last > 0)
            do {
                let ledger = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: 25)
                #expect(ledger.recovery.checkedFrom == last)
                #expect(ledger.recovery.checkedRecords > 0)
                #expect(ledger.recovery.checkedRecords <= 26 + 13)
                #expect(try ledger.verify().isIntact)
                ledger.close()
            }
            // An edit after the newest checkpoint is found at start, and the ledger is not opened.
            let head = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true)).read { try $0.head() }
            try editRecord(in: directory, sequence: head.sequence)
            #expect(throws: LedgerError.self) {
                _ = try LMDBSessionLedger(directory: directory, clock: clock.ledgerClock, checkpointEvery: 25)
            }
        }
    }
}

/// Flips a byte in the authentication name or the body of a stored record, as an intruder would.
func editRecord(in directory: String, sequence: UInt64) throws {
    let env = try #require({ () -> OpaquePointer? in
        var env: OpaquePointer?
        mdb_env_create(&env)
        mdb_env_set_maxdbs(env, 8)
        mdb_env_set_mapsize(env, 64 << 20)
        guard mdb_env_open(env, directory, 0, 0o640) == 0 else { return nil }
        return env
    }())
    defer { mdb_env_close(env) }
    var txn: OpaquePointer?
    mdb_txn_begin(env, nil, 0, &txn)
    var dbi: MDB_dbi = 0
    mdb_dbi_open(txn, "log", UInt32(MDB_INTEGERKEY), &dbi)
    var key = sequence
    withUnsafeMutableBytes(of: &key) { keyBytes in
        var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
        var v = MDB_val()
        mdb_get(txn, dbi, &k, &v)
        var copy = Array(v.bytesForTest)
        copy[24] ^= 0x01  // the timestamp
        copy.withUnsafeMutableBytes { raw in
            var nv = MDB_val(mv_size: raw.count, mv_data: raw.baseAddress)
            mdb_put(txn, dbi, &k, &nv, 0)
        }
    }
    mdb_txn_commit(txn)
}

extension MDB_val {
    fileprivate var bytesForTest: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: mv_data, count: mv_size) }
}

// MARK: - Archive

@Suite("Archive")
struct ArchiveTests {
    static let day: Int64 = 86_400 * 1_000_000

    /// `days` days of churn, `perDay` claim/release cycles a day, a checkpoint every `every` records.
    static func history(_ ledger: LMDBSessionLedger, clock: ManualClock, days: Int, perDay: Int) async throws {
        for d in 0..<days {
            for i in 0..<perDay {
                let name = "s-\((d * perDay + i) % 17)"
                let claimed = try await ledger.claim("client-\(i % 5)", name, expiry: 60)
                if let grant = claimed.grant { try await ledger.release(name, grant.connection) }
                clock.advance(seconds: 86_400 / Int64(perDay))
            }
        }
    }

    static func open(_ directory: String, clock: ManualClock, retentionDays: Int64? = 3, maxLiveBytes: Int? = nil) throws -> LMDBSessionLedger {
        try LMDBSessionLedger(
            directory: directory, clock: clock.ledgerClock, checkpointEvery: 20,
            archive: LedgerArchiver.Policy(retention: retentionDays.map { $0 * day }, maxLiveBytes: maxLiveBytes, deleteBatch: 7))
    }

    @Test("Records older than the retention and behind a checkpoint move to segments; the log reads as one")
    func archiveByAge() async throws {
        try await withMemoryScratchDirectory("archive") { directory in
            let clock = ManualClock()
            let ledger = try Self.open(directory, clock: clock)
            defer { ledger.close() }
            try await Self.history(ledger, clock: clock, days: 10, perDay: 12)
            let before = try ledger.records()
            let projectionBefore = try ledger.replay(through: .end)
            let steps = try await offPool { () throws -> Int in
                var steps = 0
                while try ledger.archiveOnce() { steps += 1 }
                return steps
            }
            #expect(steps > 3)
            let segments = ArchiveSegment.list(ledger.archiveDirectory)
            #expect(segments.count == steps)
            // Contiguous from 1, each ending just before a checkpoint, the live log after them.
            var expected: UInt64 = 1
            for segment in segments {
                #expect(segment.range.lowerBound == expected)
                expected = segment.range.upperBound + 1
            }
            let live = try #require(try ledger.liveLog())
            #expect(live.first == expected)
            #expect(try ledger.store.read { try $0.checkpoint(at: live.first) } != nil)
            // Nothing older than the retention is left live, save the span before the next checkpoint.
            #expect(live.firstTimestamp >= clock.now - 4 * Self.day)
            // The whole history still reads, verifies and replays, from the archive and the live log.
            #expect(try ledger.records() == before)
            #expect(try ledger.replay(through: .end) == projectionBefore)
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")
            #expect(report.events == ledger.head.sequence)
            let early = try ledger.replay(through: .sequence(10))
            #expect(early.lastSequence == 10)
        }
    }

    @Test("Past maxLiveBytes the oldest spans move out, whatever their age")
    func archiveBySize() async throws {
        try await withMemoryScratchDirectory("archive") { directory in
            let clock = ManualClock()
            let ledger = try Self.open(directory, clock: clock, retentionDays: nil, maxLiveBytes: 64 << 10)
            defer { ledger.close() }
            try await Self.history(ledger, clock: clock, days: 1, perDay: 600)
            try await offPool { while try ledger.archiveOnce() {} }
            let live = try #require(try ledger.liveLog())
            #expect(live.first > 1)
            #expect(live.bytes <= 64 << 10 + 16 << 10, "\(live.bytes)")
            #expect(try ledger.verify().isIntact)
        }
    }

    @Test("A move a crash interrupted (segment written, live records kept or partly deleted) is finished at open")
    func halfDoneMoveIsFinished() async throws {
        try await withMemoryScratchDirectory("archive") { directory in
            let clock = ManualClock()
            var head = LedgerHead.empty
            do {
                let ledger = try Self.open(directory, clock: clock)
                try await Self.history(ledger, clock: clock, days: 10, perDay: 12)
                // Archive one span, then write the next segment by hand and delete only part of it.
                #expect(try ledger.archiveOnce())
                let span = try #require(try ledger.archiver!.nextSpan())
                let (records, previous) = try ledger.store.read { snapshot -> ([[UInt8]], ChainHash) in
                    var records: [[UInt8]] = []
                    try snapshot.forEachRecord(from: span.lowerBound) { key, bytes in
                        guard key <= span.upperBound else { return false }
                        records.append(Array(bytes))
                        return true
                    }
                    return (records, try snapshot.archiveBoundary()!.hash)
                }
                _ = try ArchiveSegment.write(records: records, first: span.lowerBound, previousHash: previous, to: ledger.archiveDirectory)
                // A leftover temporary file, as a crash before the rename leaves.
                FileManager.default.createFile(atPath: ledger.archiveDirectory + "/.segment-x.tmp", contents: Data([1, 2, 3]))
                // Both hold the span now: the log still reads once, and verifies.
                #expect(try ledger.verify().isIntact)
                head = ledger.head
                ledger.close()
            }
            let ledger = try Self.open(directory, clock: clock)
            defer { ledger.close() }
            let segments = ArchiveSegment.list(ledger.archiveDirectory)
            #expect(segments.count == 2)
            let live = try #require(try ledger.liveLog())
            #expect(live.first == segments.last!.range.upperBound + 1)
            #expect(!FileManager.default.fileExists(atPath: ledger.archiveDirectory + "/.segment-x.tmp"))
            let report = try ledger.verify()
            #expect(report.isIntact, "\(String(describing: report.problem))")
            #expect(ledger.head.sequence >= head.sequence)
        }
    }

    @Test("A segment altered by one byte, or missing, is named by verify")
    func alteredAndMissingSegmentsAreNamed() async throws {
        try await withMemoryScratchDirectory("archive") { directory in
            let clock = ManualClock()
            let ledger = try Self.open(directory, clock: clock)
            defer { ledger.close() }
            try await Self.history(ledger, clock: clock, days: 10, perDay: 12)
            try await offPool { while try ledger.archiveOnce() {} }
            let segments = ArchiveSegment.list(ledger.archiveDirectory)
            try #require(segments.count >= 3)
            let middle = segments[1].name
            let path = ledger.archiveDirectory + "/" + middle
            var bytes = try #require(FileManager.default.contents(atPath: path))
            let original = bytes
            chmod(path, 0o640)
            bytes[bytes.count / 2] ^= 0x20
            try bytes.write(to: URL(fileURLWithPath: path))
            let altered = try ledger.verify()
            guard case .archiveDamaged(let segment, let detail) = altered.problem else {
                Issue.record("\(String(describing: altered.problem))")
                return
            }
            #expect(segment == middle)
            #expect(detail.contains("altered"), "\(detail)")
            try original.write(to: URL(fileURLWithPath: path))
            #expect(try ledger.verify().isIntact)
            try FileManager.default.removeItem(atPath: path)
            let missing = try ledger.verify()
            guard case .archiveDamaged(let name, let why) = missing.problem else {
                Issue.record("\(String(describing: missing.problem))")
                return
            }
            #expect(name == middle)
            #expect(why.contains("missing"), "\(why)")
        }
    }
}

@Suite("Archive when full")
struct ArchiveWhenFullTests {
    @Test("A ledger in its reserve archives its oldest spans whatever their age, and takes CONNECTs again")
    func fullLedgerArchivesToMakeRoom() async throws {
        try await withMemoryScratchDirectory("archive-full") { directory in
            let clock = ManualClock()
            // No retention at all: only the reserve makes the archiver move spans.
            let ledger = try LMDBSessionLedger(
                directory: directory, mapSize: 2 << 20, mapReserve: 256 << 10, clock: clock.ledgerClock,
                checkpointEvery: 200, archive: LedgerArchiver.Policy(retention: nil, maxLiveBytes: nil, deleteBatch: 100))
            defer { ledger.close() }
            #expect(try ledger.archiver!.nextSpan() == nil)
            // Sessions that end with their connection: the log grows, the projection does not.
            // 50 at a time, so that they share commits.
            var full = false
            for _ in 0..<2_000 where !full {
                full = try await withThrowingTaskGroup(of: Bool.self) { group in
                    for i in 0..<50 {
                        group.addTask {
                            do {
                                let claimed = try await ledger.claim("client-\(i % 10)", "s-\(i)", expiry: 0)
                                if let grant = claimed.grant { try await ledger.release("s-\(i)", grant.connection) }
                                return false
                            } catch let error as LedgerError {
                                #expect(error.isMapFull, "\(error)")
                                return true
                            }
                        }
                    }
                    var any = false
                    for try await refused in group where refused { any = true }
                    return any
                }
            }
            #expect(full)
            // Near the edge the ends of those sessions may free the room the refusal counted:
            // one at a time, until a claim alone is refused, which leaves no session live.
            var refused = false
            for i in 0..<10_000 where !refused {
                do {
                    let claimed = try await ledger.claim("client-0", "one-\(i)", expiry: 0)
                    if let grant = claimed.grant { try await ledger.release("one-\(i)", grant.connection) }
                } catch {
                    refused = true
                }
            }
            #expect(refused)
            #expect(try #require(ledger.mapUsage).isInReserve)
            let steps = try await offPool { () throws -> Int in
                var steps = 0
                while try ledger.archiveOnce() { steps += 1 }
                return steps
            }
            #expect(steps > 0)
            let after = try #require(ledger.mapUsage)
            #expect(!after.isInReserve, "\(after)")
            let claimed = try await ledger.claim("late", "late-session", expiry: 0)
            #expect(claimed.grant != nil)
            #expect(try ledger.verify().isIntact)
        }
    }
}
