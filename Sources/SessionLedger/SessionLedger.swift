@_exported import LedgerCore
@_exported import LMDBStorage

/// The service the fronts talk to: claim a session for a CONNECT, release it when the
/// connection ends, expire what outlived its deadline, and ask who owns what.
///
/// Every answer that changes ownership comes back only after its event is durable.
public final class SessionLedger: Sendable {
    public let store: LedgerStore
    public let writer: LedgerWriter
    /// What opening the ledger found: sessions disconnected by the restart and expired.
    public let recovery: RecoveryReport
    public var policy: NamespacePolicy { writer.policy }
    let clock: LedgerClock

    /// Opens (or creates) the ledger in `directory`, recovers it and starts the writer.
    /// `onCommit` and `onCommitFailure` observe every batch the writer commits or fails
    /// (for metrics); they run on the writer thread and must be quick. `onEvents` receives
    /// the events of every commit after recovery, in sequence order (recovery's own are in
    /// `recovery.events`). `countSessions`: keep live/connected counts (`sessionCounts`),
    /// at the price of one scan of the sessions at open.
    public init(
        directory: String, policy: NamespacePolicy = .default,
        options: LedgerStoreOptions = LedgerStoreOptions(),
        clock: @escaping LedgerClock = wallClockMicroseconds,
        onCommit: (@Sendable (CommitStatistics) -> Void)? = nil,
        onCommitFailure: (@Sendable (LedgerError) -> Void)? = nil,
        onEvents: (@Sendable ([CommittedEvent]) -> Void)? = nil,
        countSessions: Bool = false
    ) throws {
        let store = try LedgerStore(directory: directory, options: options)
        do {
            let writer = try LedgerWriter(store: store, policy: policy, clock: clock)
            writer.onCommit = onCommit
            writer.onCommitFailure = onCommitFailure
            writer.onEvents = onEvents
            self.recovery = try writer.recover()
            if countSessions { try writer.countSessions() }
            writer.start()
            self.writer = writer
        } catch {
            store.close()
            throw error
        }
        self.store = store
        self.clock = clock
    }

    /// A fresh connection number, unique for the life of the ledger.
    public func nextConnectionNumber() -> ConnectionNumber { writer.nextConnectionNumber() }

    /// Decides a CONNECT (rules R1–R7) and returns once the decision is durable.
    /// Throws (R8) when the decision could not be made durable: grant nothing then.
    public func claim(_ request: ClaimRequest) async throws(LedgerError) -> ClaimOutcome {
        let result = await withCheckedContinuation { continuation in
            writer.claim(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Records the end of a connection. Returns nil when the connection no longer held
    /// the session (it was taken over): then there is nothing to record.
    @discardableResult
    public func release(_ request: ReleaseRequest) async throws(LedgerError) -> LedgerEvent? {
        let result = await withCheckedContinuation { continuation in
            writer.release(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Records the ends of many connections in one commit (a shutdown); answers in order.
    @discardableResult
    public func releaseAll(_ requests: [ReleaseRequest]) async throws(LedgerError) -> [LedgerEvent?] {
        let result = await withCheckedContinuation { continuation in
            writer.releaseAll(requests) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Live and connected sessions now; nil unless opened with `countSessions: true`.
    public var sessionCounts: SessionCounts? { writer.sessionCounts }

    /// Expires sessions whose deadline has passed; returns their `expired` events.
    @discardableResult
    public func expireDue(limit: Int = 10_000) async throws(LedgerError) -> [LedgerEvent] {
        let result = await withCheckedContinuation { continuation in
            writer.expireDue(limit: limit) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Expires sessions as their deadlines pass, until the task is cancelled.
    /// Wakes at the earliest deadline, and at least every `maximumSleep` seconds to see new ones.
    public func runExpiry(maximumSleep: Double = 1.0, onExpired: (@Sendable ([LedgerEvent]) -> Void)? = nil) async {
        let cap = Int64(maximumSleep * 1_000_000)
        while !Task.isCancelled {
            var wait = cap
            do {
                let earliest = try store.read { try $0.earliestDeadline() }
                let now = clock()
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

    /// The projection's entry for a session name; nil when the name is free.
    /// An entry past its deadline still shows until its `expired` event is recorded.
    public func session(_ name: SessionName) throws -> SessionEntry? {
        try store.read { try $0.session(name) }
    }

    public func liveSessionCount(of client: AuthenticationName) throws -> Int {
        try store.read { try $0.liveSessionCount(of: client) }
    }

    public var head: LedgerHead { writer.currentHead }

    /// Replays the whole log and checks it against the stored projection.
    public func verify() throws -> VerifyReport {
        try store.read { try $0.verify() }
    }

    /// The projection as it stood after the given sequence number or time.
    public func replay(through limit: ReplayLimit) throws -> OwnershipProjection {
        try store.read { try $0.replay(through: limit).0 }
    }

    /// Answers what is queued, stops the writer and closes the store.
    public func close() {
        writer.stop()
        store.close()
    }
}
