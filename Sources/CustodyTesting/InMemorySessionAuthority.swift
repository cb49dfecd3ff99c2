import Dispatch
import LedgerCore
import SessionLedger
import Synchronization

/// A `SessionAuthority` that decides by the same rules (`SessionRules`) on an in-memory
/// projection, for tests of the fronts without LMDB: nothing is durable, and the chain
/// hash stays at genesis. Answers come on a queue of its own, as the real ledger answers
/// from its writer thread. `failNext` makes the next requests fail (rule R8).
public final class InMemorySessionAuthority: SessionAuthority {
    private struct State {
        var projection = OwnershipProjection()
        var sequence: UInt64 = 0
        var connections: UInt64 = 0
        var failures: [LedgerError] = []
        var closed = false
        var events: [LedgerEvent] = []
    }

    public let policy: NamespacePolicy
    public let recovery = RecoveryReport(disconnected: [], expired: [], head: .empty)
    private let clock: LedgerClock
    private let state = Mutex(State())
    private let answers = DispatchQueue(label: "custody-testing.authority")

    public init(policy: NamespacePolicy = .default, clock: @escaping LedgerClock = wallClockMicroseconds) {
        self.policy = policy
        self.clock = clock
    }

    /// Every event recorded so far, in sequence order.
    public var events: [LedgerEvent] { state.withLock { $0.events } }

    /// The next `count` requests fail with `error` (nothing of them is recorded).
    public func failNext(_ count: Int = 1, with error: LedgerError) {
        state.withLock { $0.failures += Array(repeating: error, count: count) }
    }

    public var head: LedgerHead {
        state.withLock { LedgerHead(sequence: $0.sequence, timestamp: $0.projection.lastTimestamp, hash: .genesis) }
    }

    public var sessionCounts: SessionCounts? {
        state.withLock { state in
            let sessions = state.projection.sessions.values
            return SessionCounts(live: sessions.count, connected: sessions.filter(\.isConnected).count)
        }
    }

    public func nextConnectionNumber() -> ConnectionNumber {
        state.withLock { $0.connections += 1; return $0.connections }
    }

    public func now() -> Int64 { clock() }

    public func claim(_ request: ClaimRequest, _ done: @escaping @Sendable (Result<ClaimOutcome, LedgerError>) -> Void) {
        let now = clock()
        let policy = self.policy
        answer(done) { state throws(LedgerError) in
            let current = request.sessionName.isValid ? state.projection.sessions[request.sessionName] : nil
            let plan = SessionRules.plan(
                request, current: current,
                requesterLiveSessions: state.projection.liveSessionCount(of: request.authenticationName),
                policy: policy, now: now)
            var last: LedgerEvent?
            for draft in plan.events { last = Self.append(draft, at: now, to: &state) }
            switch plan.decision {
            case .grant(let present, let expiry, let replaced):
                return .granted(SessionGrant(
                    sequence: last!.sequence, connection: request.connection, sessionPresent: present,
                    expiryInterval: expiry, replacedConnection: replaced))
            case .reject(let reason):
                return .rejected(reason, sequence: last!.sequence)
            }
        }
    }

    public func release(_ request: ReleaseRequest, _ done: @escaping @Sendable (Result<LedgerEvent?, LedgerError>) -> Void) {
        let now = clock()
        let policy = self.policy
        answer(done) { state throws(LedgerError) in Self.release(request, at: now, policy: policy, in: &state) }
    }

    public func releaseAll(
        _ requests: [ReleaseRequest], _ done: @escaping @Sendable (Result<[LedgerEvent?], LedgerError>) -> Void
    ) {
        let now = clock()
        let policy = self.policy
        answer(done) { state throws(LedgerError) in
            requests.map { Self.release($0, at: now, policy: policy, in: &state) }
        }
    }

    public func expireDue(limit: Int, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void) {
        let now = clock()
        answer(done) { state throws(LedgerError) in
            let due = state.projection.sessions.filter { $0.value.hasExpired(at: now) }.prefix(limit)
            return due.map { name, entry in
                Self.append(SessionRules.endingEvent(of: entry, named: name, kind: .expired(.sessionExpired)), at: now, to: &state)
            }
        }
    }

    public func endSession(
        _ name: SessionName, reason: ExpiryReason, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void
    ) {
        let now = clock()
        answer(done) { state throws(LedgerError) in
            guard let entry = state.projection.sessions[name] else { return [] }
            return SessionRules.forcedEnd(of: entry, named: name, reason: reason).map { Self.append($0, at: now, to: &state) }
        }
    }

    public func earliestDeadline() throws -> Int64? {
        state.withLock { $0.projection.sessions.values.compactMap(\.deadline).min() }
    }

    public func session(_ name: SessionName) throws -> SessionEntry? {
        state.withLock { $0.projection.sessions[name] }
    }

    public func liveSessionCount(of client: AuthenticationName) throws -> Int {
        state.withLock { $0.projection.liveSessionCount(of: client) }
    }

    public func liveSessionNames() throws -> Set<SessionName> {
        state.withLock { Set($0.projection.sessions.keys) }
    }

    public func close() {
        state.withLock { $0.closed = true }
    }

    private func answer<T: Sendable>(
        _ done: @escaping @Sendable (Result<T, LedgerError>) -> Void,
        _ body: @escaping @Sendable (inout State) throws(LedgerError) -> T
    ) {
        let result: Result<T, LedgerError> = state.withLock { state in
            if state.closed { return .failure(.closed) }
            if !state.failures.isEmpty { return .failure(state.failures.removeFirst()) }
            do throws(LedgerError) { return .success(try body(&state)) } catch { return .failure(error) }
        }
        answers.async { done(result) }
    }

    private static func append(_ draft: LedgerEvent, at now: Int64, to state: inout State) -> LedgerEvent {
        var event = draft
        state.sequence += 1
        event.sequence = state.sequence
        event.timestamp = max(now, state.projection.lastTimestamp)
        state.projection.apply(event)
        state.events.append(event)
        return event
    }

    private static func release(
        _ request: ReleaseRequest, at now: Int64, policy: NamespacePolicy, in state: inout State
    ) -> LedgerEvent? {
        guard request.sessionName.isValid,
            let draft = SessionRules.release(
                request.connection, of: request.sessionName, reason: request.reason,
                newExpiryInterval: request.newExpiryInterval, current: state.projection.sessions[request.sessionName],
                policy: policy, remoteAddress: request.remoteAddress)
        else { return nil }
        return append(draft, at: now, to: &state)
    }
}
