@_exported import LedgerCore

/// The one door to session ownership: whoever decides who holds which session (the
/// embedded LMDB ledger today; a cluster's consensus store later) stands behind it, and
/// the fronts talk to nothing else.
///
/// Every answer that changes ownership comes back only after its event is durable. The
/// callback forms are the hot path (a CONNECT waits for one); they may run on any thread,
/// so hop to your own before touching state. The async forms are for everything else.
public protocol SessionAuthority: AnyObject, Sendable {
    /// The namespace's rules in force (caps, expiry bounds).
    var policy: NamespacePolicy { get }

    /// What opening the authority found: sessions disconnected by a restart, and expired.
    var recovery: RecoveryReport { get }

    /// The end of the log as of the last commit.
    var head: LedgerHead { get }

    /// Live and connected sessions now; nil when the authority does not keep them.
    var sessionCounts: SessionCounts? { get }

    /// A connection number never used before, also across restarts.
    func nextConnectionNumber() -> ConnectionNumber

    /// Decides a CONNECT (rules R1–R7). A failure means the decision could not be made
    /// durable (R8): grant nothing then.
    func claim(_ request: ClaimRequest, _ done: @escaping @Sendable (Result<ClaimOutcome, LedgerError>) -> Void)

    /// Records the end of a connection. Answers nil when the connection no longer held the
    /// session (it was taken over): then there was nothing to record.
    func release(_ request: ReleaseRequest, _ done: @escaping @Sendable (Result<LedgerEvent?, LedgerError>) -> Void)

    /// Records the ends of many connections in one commit (a shutdown); answers in order.
    func releaseAll(
        _ requests: [ReleaseRequest], _ done: @escaping @Sendable (Result<[LedgerEvent?], LedgerError>) -> Void)

    /// Ends sessions whose deadline has passed (at most `limit`); answers their `expired` events.
    func expireDue(limit: Int, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void)

    /// Ends one live session now, connected or not, for `reason` (the broker's queue for it
    /// overflowed: `sessionOverflow`): a connected one's connection is recorded as ended first
    /// (`disconnected(sessionOverflow)`), then the session (`expired(reason)`). Answers those
    /// events, in order; none when the session was not live.
    func endSession(
        _ name: SessionName, reason: ExpiryReason, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void)

    /// The earliest expiry deadline (µs since the epoch), nil when no session waits to expire.
    func earliestDeadline() throws -> Int64?

    /// The authority's clock, µs since the epoch: deadlines are compared with it.
    func now() -> Int64

    /// The projection's entry for a session name; nil when the name is free. An entry past
    /// its deadline still shows until its `expired` event is recorded.
    func session(_ name: SessionName) throws -> SessionEntry?

    /// Live sessions (connected or not) of one client.
    func liveSessionCount(of client: AuthenticationName) throws -> Int

    /// Every session name the authority holds live now.
    func liveSessionNames() throws -> Set<SessionName>

    /// Answers what is queued and closes; later requests fail with `.closed`.
    func close()
}

extension SessionAuthority {
    /// Decides a CONNECT and returns once the decision is durable; throws (R8) otherwise.
    public func claim(_ request: ClaimRequest) async throws(LedgerError) -> ClaimOutcome {
        let result = await withCheckedContinuation { continuation in
            claim(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    @discardableResult
    public func release(_ request: ReleaseRequest) async throws(LedgerError) -> LedgerEvent? {
        let result = await withCheckedContinuation { continuation in
            release(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    @discardableResult
    public func releaseAll(_ requests: [ReleaseRequest]) async throws(LedgerError) -> [LedgerEvent?] {
        let result = await withCheckedContinuation { continuation in
            releaseAll(requests) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    @discardableResult
    public func expireDue(limit: Int = 10_000) async throws(LedgerError) -> [LedgerEvent] {
        let result = await withCheckedContinuation { continuation in
            expireDue(limit: limit) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    public func endSession(_ name: SessionName, reason: ExpiryReason) async throws(LedgerError) -> [LedgerEvent] {
        let result = await withCheckedContinuation { continuation in
            endSession(name, reason: reason) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Expires sessions as their deadlines pass, until the task is cancelled. Wakes at the
    /// earliest deadline, and at least every `maximumSleep` seconds to see new ones.
    public func runExpiry(maximumSleep: Double = 1.0, onExpired: (@Sendable ([LedgerEvent]) -> Void)? = nil) async {
        let cap = Int64(maximumSleep * 1_000_000)
        while !Task.isCancelled {
            var wait = cap
            do {
                let earliest = try earliestDeadline()
                let now = now()
                if let earliest, earliest <= now {
                    let expired = try await expireDue()
                    onExpired?(expired)
                    continue
                }
                if let earliest { wait = min(cap, earliest - now) }
            } catch {
                // Storage trouble: the next round tries again; claims report it themselves.
            }
            try? await Task.sleep(for: .microseconds(max(wait, 1_000)))
        }
    }
}
