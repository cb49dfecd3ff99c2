import LedgerCore
import Testing

// Pure tests of the session rules (DESIGN.md §1, R1–R7) and of the one transition
// function every projection uses. No I/O: plans are checked as values.

private let t0: Int64 = 1_750_000_000_000_000
private let second: Int64 = 1_000_000

private func auth(_ text: String) -> AuthenticationName { AuthenticationName(unchecked: text) }
private func name(_ text: String) -> SessionName { SessionName(unchecked: text) }

private func policy(sessions: Int = 10, hours: Int = 1) -> NamespacePolicy {
    try! NamespacePolicy(maximumClientSessionsPerAuthenticationName: sessions, maximumSessionExpiryInHours: hours)
}

private func request(
    _ client: String, _ session: String, connection: ConnectionNumber = 7, cleanStart: Bool = false,
    expiry: UInt32 = 600, identity: IdentityVerdict = .authenticated, protocolVersion: ProtocolVersion = .mqtt5
) -> ClaimRequest {
    ClaimRequest(
        authenticationName: auth(client), sessionName: name(session), connection: connection,
        protocolVersion: protocolVersion, cleanStart: cleanStart, requestedExpiryInterval: expiry,
        remoteAddress: "10.0.0.1:1234", identity: identity)
}

private func connectedEntry(
    owner: String, connection: ConnectionNumber = 3, expiry: UInt32 = 600, since: UInt64 = 5, first: UInt64 = 5
) -> SessionEntry {
    SessionEntry(
        owner: auth(owner), state: .connected, connection: connection, protocolVersion: .mqtt5,
        cleanStart: false, expiryInterval: expiry, sinceSequence: since, sinceTime: t0 - 100 * second,
        firstSequence: first)
}

private func disconnectedEntry(
    owner: String, connection: ConnectionNumber = 3, expiry: UInt32 = 600, deadline: Int64, first: UInt64 = 5
) -> SessionEntry {
    SessionEntry(
        owner: auth(owner), state: .disconnected(deadline: deadline), connection: connection,
        protocolVersion: .mqtt5, cleanStart: false, expiryInterval: expiry, sinceSequence: 6,
        sinceTime: deadline - Int64(expiry) * second, firstSequence: first)
}

private func plan(
    _ claim: ClaimRequest, current: SessionEntry? = nil, live: Int = 0, policy: NamespacePolicy = .default,
    now: Int64 = t0
) -> ClaimPlan {
    SessionRules.plan(claim, current: current, requesterLiveSessions: live, policy: policy, now: now)
}

/// The plan's events stamped with sequence numbers from `from` and folded over `entry`.
private func fold(_ events: [LedgerEvent], over entry: SessionEntry?, from: UInt64 = 100, at time: Int64 = t0)
    -> SessionEntry?
{
    var entry = entry
    for (offset, draft) in events.enumerated() {
        var event = draft
        event.sequence = from + UInt64(offset)
        event.timestamp = time
        entry = SessionTransition.apply(event, to: entry)
    }
    return entry
}

@Suite("SessionRules.plan")
struct SessionRulesTests {
    // MARK: R1

    @Test("R1: empty, too long or NUL-containing ClientIDs are rejected and recorded", arguments: [
        "", String(repeating: "a", count: 129), "abc\u{0}def", String(repeating: "😀", count: 129),
    ])
    func r1InvalidSessionName(_ session: String) {
        let claim = request("alice", session)
        let result = plan(claim)
        #expect(result.decision == .reject(.invalidSessionName))
        #expect(result.events.count == 1)
        let event = result.events[0]
        #expect(event.kind == .rejected(.invalidSessionName))
        #expect(event.sessionName.value == session)
        #expect(event.authenticationName.value == "alice")
        #expect(event.connection == 7)
        #expect(event.expiryInterval == 0)
        #expect(event.remoteAddress == "10.0.0.1:1234")
    }

    @Test("R1: names of exactly 128 characters are valid, counted as Unicode scalars", arguments: [
        String(repeating: "a", count: 128), String(repeating: "😀", count: 128), String(repeating: "é", count: 128),
    ])
    func r1MaximumLength(_ session: String) throws {
        #expect(SessionName(unchecked: session).isValid)
        _ = try SessionName(validating: session)
        let result = plan(request("alice", session))
        guard case .grant = result.decision else {
            Issue.record("expected a grant, got \(result.decision)")
            return
        }
        #expect(result.events.map(\.kind) == [.connected])
    }

    @Test("R1: name validation reports the problem")
    func r1NameProblems() {
        #expect(throws: NameProblem.empty) { try SessionName(validating: "") }
        #expect(throws: NameProblem.tooLong(characters: 129)) {
            try SessionName(validating: String(repeating: "x", count: 129))
        }
        #expect(throws: NameProblem.containsNullCharacter) { try SessionName(validating: "a\u{0}") }
        #expect(throws: NameProblem.empty) { try AuthenticationName(validating: "") }
    }

    @Test("R1 is checked before R7 and before the projection is consulted")
    func r1BeforeEverything() {
        let owned = connectedEntry(owner: "bob")
        let result = plan(request("alice", "", identity: .unknownClient), current: owned, live: 99)
        #expect(result.decision == .reject(.invalidSessionName))
        #expect(result.events.map(\.kind) == [.rejected(.invalidSessionName)])
    }

    // MARK: R7

    @Test("R7: identity verdicts become the matching rejections", arguments: [
        (IdentityVerdict.unknownClient, RejectionReason.unknownClient),
        (.clientDisabled, .clientDisabled),
        (.authenticationFailed, .authenticationFailed),
    ])
    func r7IdentityVerdicts(_ verdict: IdentityVerdict, _ reason: RejectionReason) {
        // Even for a free name and a client well below its cap.
        let result = plan(request("alice", "s1", identity: verdict))
        #expect(result.decision == .reject(reason))
        #expect(result.events.map(\.kind) == [.rejected(reason)])
        #expect(result.events[0].sessionName.value == "s1")
    }

    @Test("R7: an identity verdict wins over a session owned by another client")
    func r7BeforeR6() {
        let result = plan(request("alice", "s1", identity: .clientDisabled), current: connectedEntry(owner: "bob"))
        #expect(result.decision == .reject(.clientDisabled))
        #expect(result.events.count == 1)
    }

    @Test("An invalid authentication name is rejected as such")
    func invalidAuthenticationName() {
        for bad in ["", String(repeating: "a", count: 129), "a\u{0}b"] {
            let result = plan(request(bad, "s1"))
            #expect(result.decision == .reject(.invalidAuthenticationName))
            #expect(result.events.map(\.kind) == [.rejected(.invalidAuthenticationName)])
        }
    }

    // MARK: R2 / R3

    @Test("R2: a free session name is granted without a session present")
    func r2Grant() {
        let result = plan(request("alice", "s1", connection: 42, expiry: 300), live: 9)
        #expect(result.decision == .grant(sessionPresent: false, expiryInterval: 300, replacedConnection: nil))
        #expect(result.events.count == 1)
        let event = result.events[0]
        #expect(event.kind == .connected)
        #expect(event.authenticationName.value == "alice")
        #expect(event.sessionName.value == "s1")
        #expect(event.connection == 42)
        #expect(event.expiryInterval == 300)
        #expect(event.protocolVersion == .mqtt5)
        #expect(event.sequence == 0, "drafts are stamped by the writer")
    }

    @Test("R3: at the cap, a new session is a quota rejection", arguments: [1, 3, 10, 100])
    func r3Cap(_ cap: Int) {
        let rules = policy(sessions: cap)
        let below = plan(request("alice", "new"), live: cap - 1, policy: rules)
        #expect(below.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: nil))
        let at = plan(request("alice", "new"), live: cap, policy: rules)
        #expect(at.decision == .reject(.quotaExceeded))
        #expect(at.events.map(\.kind) == [.rejected(.quotaExceeded)])
    }

    @Test("R3 does not apply to taking over or resuming one's own session")
    func r3NotForOwnSessions() {
        let rules = policy(sessions: 3)
        let takeover = plan(request("alice", "s1"), current: connectedEntry(owner: "alice"), live: 3, policy: rules)
        #expect(takeover.decision == .grant(sessionPresent: true, expiryInterval: 600, replacedConnection: 3))
        let resume = plan(
            request("alice", "s1"), current: disconnectedEntry(owner: "alice", deadline: t0 + second), live: 3,
            policy: rules)
        #expect(resume.decision == .grant(sessionPresent: true, expiryInterval: 600, replacedConnection: nil))
    }

    @Test("R3: a past-deadline session of the claimed name stops counting for its owner")
    func r3StaleOwnSessionFreesQuota() {
        let rules = policy(sessions: 3)
        let stale = disconnectedEntry(owner: "Alice", connection: 9, deadline: t0 - second)
        let result = plan(request("alice", "s1", connection: 10), current: stale, live: 3, policy: rules)
        #expect(result.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: nil))
        #expect(result.events.map(\.kind) == [.expired(.sessionExpired), .connected])
        let expired = result.events[0]
        #expect(expired.authenticationName.value == "Alice")
        #expect(expired.connection == 9)
    }

    @Test("R3: a past-deadline session of another client frees the name, but not the requester's quota")
    func r3StaleOtherSessionKeepsQuota() {
        let rules = policy(sessions: 3)
        let stale = disconnectedEntry(owner: "bob", deadline: t0 - second)
        let result = plan(request("alice", "s1"), current: stale, live: 3, policy: rules)
        #expect(result.decision == .reject(.quotaExceeded))
        #expect(result.events.map(\.kind) == [.expired(.sessionExpired), .rejected(.quotaExceeded)])
        #expect(result.events[0].authenticationName.value == "bob")
    }

    // MARK: R4

    @Test("R4: takeover by the same identity, also when it differs only by case", arguments: ["alice", "ALICE", "Alice"])
    func r4Takeover(_ requester: String) {
        let old = connectedEntry(owner: "Alice", connection: 3, expiry: 600)
        let result = plan(request(requester, "s1", connection: 4, expiry: 100), current: old)
        #expect(result.decision == .grant(sessionPresent: true, expiryInterval: 100, replacedConnection: 3))
        #expect(result.events.map(\.kind) == [.disconnected(.sessionTakenOver), .connected])
        let ended = result.events[0]
        #expect(ended.authenticationName.value == "Alice", "the ending is attributed to the old owner")
        #expect(ended.connection == 3)
        #expect(ended.expiryInterval == 600)
        let started = result.events[1]
        #expect(started.authenticationName.value == requester)
        #expect(started.connection == 4)

        // The session continues with the new connection.
        let after = fold(result.events, over: old)
        #expect(after?.state == .connected)
        #expect(after?.connection == 4)
        #expect(after?.owner.value == requester)
        #expect(after?.firstSequence == old.firstSequence)
    }

    @Test("R4: no session present with Clean Start, nor when the old session had expiry 0")
    func r4SessionPresent() {
        let clean = plan(request("alice", "s1", connection: 4, cleanStart: true), current: connectedEntry(owner: "alice"))
        #expect(clean.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: 3))
        let after = fold(clean.events, over: connectedEntry(owner: "alice"), from: 100)
        #expect(after?.firstSequence == 101, "a clean start starts a new session")

        let ephemeral = plan(request("alice", "s1", connection: 4), current: connectedEntry(owner: "alice", expiry: 0))
        #expect(ephemeral.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: 3))
        #expect(ephemeral.events.map(\.kind) == [.disconnected(.sessionTakenOver), .connected])
        #expect(ephemeral.events[0].expiryInterval == 0)
        let afterEphemeral = fold(ephemeral.events, over: connectedEntry(owner: "alice", expiry: 0), from: 100)
        #expect(afterEphemeral?.firstSequence == 101, "the old session ended with its connection")
    }

    // MARK: R5

    @Test("R5: resuming a disconnected, unexpired session")
    func r5Resume() {
        let offline = disconnectedEntry(owner: "alice", connection: 3, deadline: t0 + second)
        let resume = plan(request("ALICE", "s1", connection: 8), current: offline)
        #expect(resume.decision == .grant(sessionPresent: true, expiryInterval: 600, replacedConnection: nil))
        #expect(resume.events.map(\.kind) == [.connected])
        #expect(fold(resume.events, over: offline)?.firstSequence == offline.firstSequence)

        let clean = plan(request("alice", "s1", connection: 8, cleanStart: true), current: offline)
        #expect(clean.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: nil))
        #expect(clean.events.map(\.kind) == [.connected])
        #expect(fold(clean.events, over: offline, from: 200)?.firstSequence == 200)
    }

    @Test("A deadline is reached at its exact microsecond")
    func deadlineBoundary() {
        let offline = disconnectedEntry(owner: "bob", deadline: t0)
        #expect(offline.hasExpired(at: t0))
        #expect(!offline.hasExpired(at: t0 - 1))
        #expect(!connectedEntry(owner: "bob").hasExpired(at: .max))

        let justBefore = plan(request("alice", "s1"), current: offline, now: t0 - 1)
        #expect(justBefore.decision == .reject(.ownedByAnotherClient))
        let atDeadline = plan(request("alice", "s1"), current: offline, now: t0)
        #expect(atDeadline.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: nil))
    }

    // MARK: R6

    @Test("R6: another identity is rejected while the owner is connected or offline and unexpired")
    func r6OwnedByAnother() {
        for current in [connectedEntry(owner: "bob"), disconnectedEntry(owner: "bob", deadline: t0 + second)] {
            let result = plan(request("alice", "s1"), current: current)
            #expect(result.decision == .reject(.ownedByAnotherClient))
            #expect(result.events.map(\.kind) == [.rejected(.ownedByAnotherClient)])
            #expect(result.events[0].authenticationName.value == "alice")
            // The owner's session is untouched by the rejection.
            #expect(fold(result.events, over: current) == current)
        }
    }

    @Test("R6 ends at expiry: the other identity gets the name after an expired event")
    func r6AfterExpiry() {
        let stale = disconnectedEntry(owner: "bob", connection: 3, deadline: t0 - 1)
        let result = plan(request("alice", "s1", connection: 4), current: stale)
        #expect(result.decision == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: nil))
        #expect(result.events.map(\.kind) == [.expired(.sessionExpired), .connected])
        #expect(result.events[0].authenticationName.value == "bob")
        #expect(result.events[0].connection == 3)
        let after = fold(result.events, over: stale, from: 50)
        #expect(after?.owner.value == "alice")
        #expect(after?.firstSequence == 51)
    }

    // MARK: Expiry interval

    @Test("The requested expiry interval is capped by the policy", arguments: [
        (UInt32.max, 1, UInt32(3600)), (UInt32.max, 8, 28_800), (7200, 1, 3600), (3599, 1, 3599), (0, 1, 0),
    ])
    func expiryCap(_ requested: UInt32, _ hours: Int, _ expected: UInt32) {
        let rules = policy(hours: hours)
        #expect(rules.effectiveExpiry(requested: requested) == expected)
        let result = plan(request("alice", "s1", expiry: requested), policy: rules)
        #expect(result.decision == .grant(sessionPresent: false, expiryInterval: expected, replacedConnection: nil))
        #expect(result.events.last?.expiryInterval == expected)
    }

    @Test("Policy settings outside Event Grid's ranges are refused")
    func policyRanges() {
        #expect(throws: PolicyError.self) { try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 0) }
        #expect(throws: PolicyError.self) { try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 101) }
        #expect(throws: PolicyError.self) { try NamespacePolicy(maximumSessionExpiryInHours: 0) }
        #expect(throws: PolicyError.self) { try NamespacePolicy(maximumSessionExpiryInHours: 9) }
        #expect(NamespacePolicy.default.maximumClientSessionsPerAuthenticationName == 10)
        #expect(NamespacePolicy.default.maximumSessionExpirySeconds == 3600)
    }

    // MARK: Release

    @Test("Release records the end of the connection that holds the session")
    func releaseHolder() throws {
        let current = connectedEntry(owner: "Alice", connection: 3, expiry: 600)
        let event = try #require(SessionRules.release(
            3, of: name("s1"), reason: .connectionLost, newExpiryInterval: nil, current: current,
            policy: .default, remoteAddress: "10.0.0.2:1"))
        #expect(event.kind == .disconnected(.connectionLost))
        #expect(event.authenticationName.value == "Alice")
        #expect(event.connection == 3)
        #expect(event.expiryInterval == 600)
        #expect(event.remoteAddress == "10.0.0.2:1")
    }

    @Test("Release is nil for a connection that no longer holds the session")
    func releaseNonHolder() {
        let connected = connectedEntry(owner: "alice", connection: 4)
        #expect(SessionRules.release(
            3, of: name("s1"), reason: .clientInitiatedDisconnect, newExpiryInterval: nil, current: connected,
            policy: .default) == nil)
        let offline = disconnectedEntry(owner: "alice", connection: 3, deadline: t0)
        #expect(SessionRules.release(
            3, of: name("s1"), reason: .clientInitiatedDisconnect, newExpiryInterval: nil, current: offline,
            policy: .default) == nil)
        #expect(SessionRules.release(
            3, of: name("s1"), reason: .clientInitiatedDisconnect, newExpiryInterval: nil, current: nil,
            policy: .default) == nil)
    }

    @Test("A DISCONNECT may change the expiry interval, capped, but not raise it from 0", arguments: [
        (UInt32(600), UInt32?.none, UInt32(600)),
        (600, 30, 30),
        (600, 0, 0),
        (600, UInt32.max, 3600),
        (0, 600, 0),
        (0, 0, 0),
    ])
    func releaseExpiryChange(_ old: UInt32, _ requested: UInt32?, _ expected: UInt32) throws {
        let current = connectedEntry(owner: "alice", connection: 3, expiry: old)
        let event = try #require(SessionRules.release(
            3, of: name("s1"), reason: .clientInitiatedDisconnect, newExpiryInterval: requested, current: current,
            policy: .default))
        #expect(event.expiryInterval == expected)
    }

    // MARK: Transitions

    @Test("SessionTransition: connected, disconnected, expired and rejected")
    func transitions() {
        func event(_ kind: LedgerEventKind, seq: UInt64, at time: Int64, conn: ConnectionNumber = 1,
                   owner: String = "alice", clean: Bool = false, expiry: UInt32 = 60) -> LedgerEvent {
            LedgerEvent(
                sequence: seq, timestamp: time, kind: kind, authenticationName: auth(owner), sessionName: name("s"),
                connection: conn, protocolVersion: .mqtt3_1_1, cleanStart: clean, expiryInterval: expiry)
        }
        let started = SessionTransition.apply(event(.connected, seq: 1, at: t0), to: nil)
        #expect(started == SessionEntry(
            owner: auth("alice"), state: .connected, connection: 1, protocolVersion: .mqtt3_1_1, cleanStart: false,
            expiryInterval: 60, sinceSequence: 1, sinceTime: t0, firstSequence: 1))

        #expect(SessionTransition.apply(event(.rejected(.ownedByAnotherClient), seq: 2, at: t0, owner: "bob"), to: started)
            == started)
        #expect(SessionTransition.apply(event(.rejected(.quotaExceeded), seq: 2, at: t0), to: nil) == nil)

        let offline = SessionTransition.apply(event(.disconnected(.connectionLost), seq: 3, at: t0 + second), to: started)
        #expect(offline?.state == .disconnected(deadline: t0 + second + 60 * second))
        #expect(offline?.deadline == t0 + 61 * second)
        #expect(offline?.sinceSequence == 3)
        #expect(offline?.sinceTime == t0 + second)
        #expect(offline?.connection == 1)
        #expect(offline?.firstSequence == 1)

        let resumed = SessionTransition.apply(event(.connected, seq: 4, at: t0 + 2 * second, conn: 2), to: offline)
        #expect(resumed?.firstSequence == 1)
        #expect(resumed?.connection == 2)
        #expect(resumed?.deadline == nil)

        let restarted = SessionTransition.apply(
            event(.connected, seq: 5, at: t0 + 3 * second, conn: 3, clean: true), to: resumed)
        #expect(restarted?.firstSequence == 5)
        #expect(restarted?.cleanStart == true)

        #expect(SessionTransition.apply(event(.expired(.sessionExpired), seq: 6, at: t0), to: offline) == nil)
        #expect(SessionTransition.apply(
            event(.disconnected(.clientInitiatedDisconnect), seq: 7, at: t0, expiry: 0), to: started) == nil,
            "a session with expiry 0 ends with its connection")
    }

    // MARK: OwnershipProjection

    @Test("OwnershipProjection keeps owners, live counts by case-insensitive key and deadlines")
    func projection() {
        var projection = OwnershipProjection()
        var sequence: UInt64 = 0
        func apply(_ kind: LedgerEventKind, _ owner: String, _ session: String, conn: ConnectionNumber,
                   expiry: UInt32 = 60, at time: Int64 = t0) {
            sequence += 1
            projection.apply(LedgerEvent(
                sequence: sequence, timestamp: time, kind: kind, authenticationName: auth(owner),
                sessionName: name(session), connection: conn, protocolVersion: .mqtt5, cleanStart: false,
                expiryInterval: expiry))
        }
        apply(.connected, "Alice", "a1", conn: 1)
        apply(.connected, "alice", "a2", conn: 2)
        apply(.connected, "bob", "b1", conn: 3, expiry: 0)
        apply(.rejected(.ownedByAnotherClient), "bob", "a1", conn: 4)
        #expect(projection.liveSessionCount(of: auth("ALICE")) == 2)
        #expect(projection.liveSessionCount(of: auth("bob")) == 1)
        #expect(projection.sessions(of: auth("alice")).keys.sorted { $0.value < $1.value } == [name("a1"), name("a2")])
        #expect(projection.sessions[name("a1")]?.owner.value == "Alice")
        #expect(projection.lastSequence == 4)
        #expect(projection.deadlineKeys.isEmpty)

        apply(.disconnected(.connectionLost), "Alice", "a1", conn: 1, at: t0 + second)
        #expect(projection.liveSessionCount(of: auth("alice")) == 2, "offline sessions are live")
        #expect(projection.deadlineKeys == [
            ProjectionFormat.deadlineKey(t0 + 61 * second, sessionKey: ProjectionFormat.sessionKey(name("a1"))),
        ])
        #expect(projection.lastTimestamp == t0 + second)

        apply(.disconnected(.clientInitiatedDisconnect), "bob", "b1", conn: 3, expiry: 0)
        #expect(projection.liveSessionCount(of: auth("bob")) == 0)
        #expect(projection.liveSessionCounts["bob"] == nil, "a client without live sessions has no count")
        #expect(projection.sessions[name("b1")] == nil)

        apply(.expired(.sessionExpired), "Alice", "a1", conn: 1, at: t0 + 61 * second)
        #expect(projection.liveSessionCount(of: auth("alice")) == 1)
        #expect(projection.deadlineKeys.isEmpty)
        #expect(projection.sessions.count == 1)

        // A rejection of an invalid name changes nothing but the position.
        apply(.rejected(.invalidSessionName), "carol", "", conn: 9)
        #expect(projection.sessions.count == 1)
        #expect(projection.lastSequence == 8)
    }

    @Test("Folding a plan's events reproduces what the plan decided", arguments: [false, true])
    func planFoldsConsistently(_ cleanStart: Bool) {
        // Takeover, then resume after a clean disconnect, all folded through one projection.
        var projection = OwnershipProjection()
        var sequence: UInt64 = 0
        func run(_ claim: ClaimRequest, now: Int64) -> ClaimPlan.Decision {
            let current = projection.sessions[claim.sessionName]
            let result = SessionRules.plan(
                claim, current: current, requesterLiveSessions: projection.liveSessionCount(of: claim.authenticationName),
                policy: .default, now: now)
            for var event in result.events {
                sequence += 1
                event.sequence = sequence
                event.timestamp = now
                projection.apply(event)
            }
            return result.decision
        }
        #expect(run(request("alice", "s", connection: 1), now: t0)
            == .grant(sessionPresent: false, expiryInterval: 600, replacedConnection: nil))
        #expect(run(request("Alice", "s", connection: 2, cleanStart: cleanStart), now: t0 + 1)
            == .grant(sessionPresent: !cleanStart, expiryInterval: 600, replacedConnection: 1))
        #expect(run(request("bob", "s", connection: 3), now: t0 + 2) == .reject(.ownedByAnotherClient))
        #expect(projection.sessions[name("s")]?.connection == 2)
        #expect(projection.liveSessionCount(of: auth("alice")) == 1)
        #expect(projection.liveSessionCount(of: auth("bob")) == 0)
        #expect(projection.lastSequence == 4)
    }
}
