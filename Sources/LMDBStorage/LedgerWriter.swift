import CLMDB
import Foundation
import LedgerCore
import Synchronization

/// The single writer of the ledger, with group commit.
///
/// Requests queue up while a commit is in progress. When the writer thread is free it
/// takes every waiting request, decides them in arrival order inside one LMDB write
/// transaction, commits (one fsync) and only then answers each caller. Because decisions
/// are made one after another against the transaction's own view, two racing claims for
/// one session name can never both win. If anything in the batch fails to become durable,
/// every request in it fails (rule R8): nobody is told of an event that is not on disk.
public final class LedgerWriter: @unchecked Sendable {
    enum Command {
        case claim(ClaimRequest, @Sendable (Result<ClaimOutcome, LedgerError>) -> Void)
        case release(ReleaseRequest, @Sendable (Result<LedgerEvent?, LedgerError>) -> Void)
        case releaseAll([ReleaseRequest], @Sendable (Result<[LedgerEvent?], LedgerError>) -> Void)
        case expire(limit: Int, @Sendable (Result<[LedgerEvent], LedgerError>) -> Void)
        case end(SessionName, ExpiryReason, @Sendable (Result<[LedgerEvent], LedgerError>) -> Void)
        /// Deletes the live records through `boundary.sequence`, which an archive segment holds.
        case trim(ArchiveBoundary, @Sendable (Result<Void, LedgerError>) -> Void)
        /// Appends events another authority decided (a cluster's etcd), in order.
        case record([LedgerEvent], @Sendable (Result<[LedgerEvent], LedgerError>) -> Void)

        var isClaim: Bool {
            if case .claim = self { return true }
            return false
        }

        /// A CONNECT waits for it: commit without holding the batch back.
        var isUrgent: Bool {
            switch self {
            case .claim, .record: true
            default: false
            }
        }

        func fail(_ error: LedgerError) {
            switch self {
            case .claim(_, let done): done(.failure(error))
            case .release(_, let done): done(.failure(error))
            case .releaseAll(_, let done): done(.failure(error))
            case .expire(_, let done): done(.failure(error))
            case .end(_, _, let done): done(.failure(error))
            case .trim(_, let done): done(.failure(error))
            case .record(_, let done): done(.failure(error))
            }
        }
    }

    public let store: LedgerStore
    public let policy: NamespacePolicy
    let clock: LedgerClock

    /// The writer thread; created in `init`, started by `start()`.
    private var thread: GroupCommitThread<Command>!
    /// What other threads read of the writer's state: the head and the session counts.
    private let published: Mutex<(head: LedgerHead, counts: SessionCounts?)>

    // Owned by the writer thread once it runs (before that, by the opener).
    private var head: LedgerHead
    private var highestConnection: UInt64

    private let connectionCounter: Mutex<UInt64>
    /// How full the map was after the last commit.
    private let publishedUsage: Mutex<MapUsage?> = Mutex(nil)
    /// How long a small batch without claims (releases, expiries) may wait for a claim to
    /// share its commit and fsync. Nobody waits on those answers before replying to a client,
    /// and at low concurrency every CONNECT/DISCONNECT cycle then costs one fsync instead of
    /// two; the recorded time of such events is later by at most this much. 0 disables it.
    /// Set before `start()`.
    public var claimlessCommitDelay: Double = 0.005
    /// Batches at least this large commit at once, claims or not.
    public var claimlessCommitThreshold = 64
    /// A checkpoint record is appended, in the commit that reaches it, once this many
    /// records follow the last one; 0 writes none. Set before `recover()`.
    public var checkpointEvery: UInt64 = LedgerWriter.defaultCheckpointEvery
    public static let defaultCheckpointEvery: UInt64 = 100_000

    /// Observes each committed batch. Set before `start()`.
    public var onCommit: (@Sendable (CommitStatistics) -> Void)?
    /// Observes each batch whose transaction failed (nothing of it was granted). Set before `start()`.
    public var onCommitFailure: (@Sendable (LedgerError) -> Void)?
    /// Receives the events of each commit, in sequence order, after they are durable and
    /// before any caller hears its answer; commits follow one another (one writer thread).
    /// Runs on the writer thread: hand the events on, do not block. Set before `start()`.
    public var onEvents: (@Sendable ([CommittedEvent]) -> Void)?
    /// The projection's session counts, kept up to date by every commit (writer thread).
    private var counts: SessionCounts?

    /// A commit whose meta page is not durable yet (deferred meta sync): its observer call
    /// and answers wait for the next commit's flush, or for `syncMeta` when none follows at
    /// once. Writer thread.
    private struct AwaitingMeta {
        var batch: [Command]
        var events: [CommittedEvent]?
        var deliveries: [() -> Void]
    }
    private var awaitingMeta: AwaitingMeta?

    public init(store: LedgerStore, policy: NamespacePolicy, clock: @escaping LedgerClock = wallClockMicroseconds) throws {
        precondition(!store.isReadOnly, "a read-only ledger cannot be written")
        self.store = store
        self.policy = policy
        self.clock = clock
        let (head, connections) = try store.read { (try $0.head(), try $0.highestConnection()) }
        self.head = head
        self.highestConnection = connections
        self.connectionCounter = Mutex(connections)
        self.published = Mutex((head, nil))
        thread = GroupCommitThread(name: "custody-writer", isUrgent: \.isUrgent) { [unowned self] batch in
            process(batch)
        }
        thread.beforeWaiting = { [unowned self] in syncMeta() }
    }

    /// A connection number never used before, also across restarts.
    public func nextConnectionNumber() -> ConnectionNumber {
        connectionCounter.withLock { value in
            value += 1
            return value
        }
    }

    /// How full the ledger's map was after the last commit (nil before the first).
    public var mapUsage: MapUsage? {
        publishedUsage.withLock { $0 }
    }

    public var currentHead: LedgerHead {
        published.withLock { $0.head }
    }

    /// Live and connected sessions as of the last commit; nil until `countSessions()`.
    public var sessionCounts: SessionCounts? {
        published.withLock { $0.counts }
    }

    /// Counts the sessions of the projection once (one scan of the sessions table) and keeps
    /// the counts up to date from then on at no further cost. Call before `start()`.
    public func countSessions() throws {
        precondition(!thread.isRunning)
        var live = 0
        var connected = 0
        try store.read { snapshot in
            try snapshot.forEachSession { _, entry in
                live += 1
                if entry.state == .connected { connected += 1 }
            }
        }
        counts = SessionCounts(live: live, connected: connected)
        published.withLock { $0.counts = counts }
    }

    /// Brings the projection up to date after a stop or a crash, in one commit:
    /// expires sessions whose deadline passed while the broker was down, then records
    /// `disconnected(brokerRestart)` for every session still shown as connected.
    /// Call once, before `start()`.
    public func recover() throws(LedgerError) -> RecoveryReport {
        precondition(!thread.isRunning)
        let now = max(clock(), head.timestamp)
        var tail: (from: UInt64, records: Int) = (0, 0)
        let ((expired, disconnected), w) = try store.write(
            head: head, highestConnection: highestConnection, timestamp: now
        ) { (w) throws(LedgerError) -> ([LedgerEvent], [LedgerEvent]) in
            w.appended = []
            tail = try Self.checkTail(w, every: checkpointEvery == 0 ? Self.defaultCheckpointEvery : checkpointEvery)
            let expired = try Self.expireDue(&w, now: now, limit: Int.max, reason: .expiredWhileBrokerDown)
            var connected: [[UInt8]] = []
            do {
                try scanTable(txn: w.txn, dbi: w.lmdb.sessions, first: nil) { key, value in
                    // State byte at offset 1: 1 = connected. Decoding happens below.
                    if value.count > 1, value[1] == 1 { connected.append(Array(key)) }
                    return true
                }
            } catch let error as LedgerError {
                throw error
            } catch {
                throw .corruptRecord(table: "sessions", detail: "\(error)")
            }
            var disconnected: [LedgerEvent] = []
            for key in connected {
                guard let (name, entry) = try w.namedSession(key) else { continue }
                let draft = SessionRules.endingEvent(of: entry, named: name, kind: .disconnected(.brokerRestart))
                disconnected.append(try w.append(draft, current: entry, sessionKey: key).0)
            }
            try Self.checkpointIfDue(&w, every: checkpointEvery)
            return (expired, disconnected)
        }
        head = w.head
        highestConnection = w.highestConnection
        if store.lmdb.deferredMetaSync { try store.lmdb.syncMeta() }
        published.withLock { $0.head = w.head }
        var report = RecoveryReport(disconnected: disconnected, expired: expired, head: head, events: w.appended ?? [])
        report.checkedFrom = tail.from
        report.checkedRecords = tail.records
        return report
    }

    /// Appends a checkpoint when `every` records have followed the last one (or the log's start).
    static func checkpointIfDue(_ w: inout LedgerWriteTransaction, every: UInt64) throws(LedgerError) {
        guard every > 0, w.head.sequence > 0, w.head.sequence - w.lastCheckpoint >= every else { return }
        try w.appendCheckpoint()
    }

    /// Recovery's check of the log's tail: the newest checkpoint and every record after it
    /// are read, decoded and chained, and the last is the stored head. Without a checkpoint
    /// the last `every` records are. Answers the sequence it started from and the records read.
    static func checkTail(_ w: LedgerWriteTransaction, every: UInt64) throws(LedgerError) -> (from: UInt64, records: Int) {
        let head = w.head
        guard head.sequence > 0 else { return (0, 0) }
        let fallback = head.sequence > every ? head.sequence - every + 1 : 1
        let from = w.lastCheckpoint > 0 ? w.lastCheckpoint : max(fallback, w.archivedThrough + 1)
        var previous: ChainHash
        if from == w.archivedThrough + 1 {
            previous = w.archivedHash
        } else {
            guard let before = try readRecordBytes(txn: w.txn, lmdb: w.lmdb, sequence: from - 1) else {
                throw .corruptRecord(table: "log", detail: "record \(from - 1) before the tail is missing")
            }
            previous = before.withUnsafeBytes { EventRecordFormat.storedHash($0) }
        }
        var expected = from
        var problem: String?
        do {
            var start = from
            try withUnsafeMutableBytes(of: &start) { startBytes in
                var key = MDB_val(mv_size: 8, mv_data: startBytes.baseAddress)
                try scanTable(txn: w.txn, dbi: w.lmdb.log, first: &key) { k, bytes in
                    let sequence = k.loadUnaligned(as: UInt64.self)
                    guard sequence == expected else {
                        problem = "sequence gap: expected \(expected), found \(sequence)"
                        return false
                    }
                    if let failure = LogRecordCheck.problem(bytes, sequence: sequence) {
                        problem = "record \(sequence) is unreadable: \(failure)"
                        return false
                    }
                    let stored = EventRecordFormat.storedHash(bytes)
                    guard EventRecordFormat.chainHash(of: bytes, previous: previous) == stored else {
                        problem = "record \(sequence) does not match its hash chain"
                        return false
                    }
                    previous = stored
                    expected += 1
                    return true
                }
            }
        } catch let error as LedgerError {
            throw error
        } catch {
            throw .corruptRecord(table: "log", detail: "\(error)")
        }
        if let problem { throw .corruptRecord(table: "log", detail: "recovery's check from \(from): \(problem)") }
        guard expected - 1 == head.sequence, previous == head.hash else {
            throw .corruptRecord(table: "meta", detail: "the stored head \(head.sequence) is not where the log ends (\(expected - 1))")
        }
        return (from, Int(expected - from))
    }

    /// Expires up to `limit` sessions whose deadline is at or before `now`, earliest first.
    static func expireDue(
        _ w: inout LedgerWriteTransaction, now: Int64, limit: Int, reason: ExpiryReason
    ) throws(LedgerError) -> [LedgerEvent] {
        guard limit > 0 else { return [] }
        var due: [[UInt8]] = []
        do {
            try scanTable(txn: w.txn, dbi: w.lmdb.deadlines, first: nil) { key, _ in
                let (deadline, sessionKey) = try ProjectionFormat.decodeDeadlineKey(key)
                guard deadline <= now else { return false }
                due.append(sessionKey)
                return due.count < limit
            }
        } catch let error as LedgerError {
            throw error
        } catch {
            throw .corruptRecord(table: "deadlines", detail: "\(error)")
        }
        var events: [LedgerEvent] = []
        for key in due {
            guard let (name, entry) = try w.namedSession(key) else {
                throw .corruptRecord(table: "deadlines", detail: "a deadline points to a session that is not stored")
            }
            let draft = SessionRules.endingEvent(of: entry, named: name, kind: .expired(reason))
            events.append(try w.append(draft, current: entry, sessionKey: key).0)
        }
        return events
    }

    /// A request of a bulk load (`load`).
    public enum BulkRequest: Sendable {
        case claim(ClaimRequest)
        case release(ReleaseRequest)
    }

    /// Bulk loading, for tests and benchmarks: decides the requests in order, `batch` of them
    /// to a transaction (one commit and fsync each), on the caller's thread, before `start()`.
    /// Answers how many claims were not granted; a failed commit throws.
    @discardableResult
    public func load(_ requests: [BulkRequest], batch: Int = 10_000) throws -> Int {
        precondition(!thread.isRunning)
        final class Tally: @unchecked Sendable {
            var refused = 0
            var failure: LedgerError?
        }
        let tally = Tally()
        var start = 0
        while start < requests.count {
            let chunk = requests[start..<min(start + batch, requests.count)].map { request -> Command in
                switch request {
                case .claim(let claim):
                    return .claim(claim) { result in
                        switch result {
                        case .success(.granted): break
                        case .success(.rejected): tally.refused += 1
                        case .failure(let error): tally.failure = error
                        }
                    }
                case .release(let release):
                    return .release(release) { result in
                        if case .failure(let error) = result { tally.failure = error }
                    }
                }
            }
            process(chunk)
            syncMeta()
            if let failure = tally.failure { throw failure }
            start += batch
        }
        return tally.refused
    }

    public func start() {
        thread.holdDelay = claimlessCommitDelay
        thread.holdThreshold = claimlessCommitThreshold
        thread.start()
    }

    /// Answers every request already queued, then stops the thread. Later requests fail
    /// with `.closed`.
    public func stop() {
        thread.stop()
    }

    public func claim(_ request: ClaimRequest, _ done: @escaping @Sendable (Result<ClaimOutcome, LedgerError>) -> Void) {
        enqueue(.claim(request, done))
    }

    public func release(_ request: ReleaseRequest, _ done: @escaping @Sendable (Result<LedgerEvent?, LedgerError>) -> Void) {
        enqueue(.release(request, done))
    }

    /// Records the ends of many connections in one transaction (one commit, one fsync, one
    /// timestamp): what a shutdown does. Answers each request in order (nil: nothing to record).
    public func releaseAll(
        _ requests: [ReleaseRequest], _ done: @escaping @Sendable (Result<[LedgerEvent?], LedgerError>) -> Void
    ) {
        enqueue(.releaseAll(requests, done))
    }

    public func expireDue(limit: Int = 10_000, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void) {
        enqueue(.expire(limit: limit, done))
    }

    /// Ends one live session now for `reason` (`SessionRules.forcedEnd`); answers its events
    /// (none when the session is not live).
    public func end(
        _ name: SessionName, reason: ExpiryReason, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void
    ) {
        enqueue(.end(name, reason, done))
    }

    private func enqueue(_ command: Command) {
        if !thread.enqueue(command) { command.fail(.closed) }
    }

    /// The error a claim gets while the map is in its reserve: a full store, rule R8 (0x88).
    static func reserveRefusal(_ usage: MapUsage) -> LedgerError {
        .storage(
            operation: "claim", code: LedgerError.mapFullCode,
            message: "the ledger map is in its reserve (\(usage.usedBytes >> 10) KiB used of \(usage.maximumBytes >> 10) KiB, \((usage.reserveBytes + usage.endingBytes) >> 10) KiB kept for recovery and the ends of live sessions); CONNECTs are refused until room is made")
    }

    private func process(_ batch: [Command]) {
        let started = DispatchTime.now().uptimeNanoseconds
        let transactionBefore = store.lmdb.lmdb.lastTransactionID
        let now = max(clock(), head.timestamp)
        var deliveries: [() -> Void] = []
        deliveries.reserveCapacity(batch.count)
        let policy = self.policy
        let observer = onEvents
        var usage: MapUsage?
        do {
            let (_, w) = try store.write(head: head, highestConnection: highestConnection, timestamp: now) {
                (w) throws(LedgerError) in
                // The body runs again from the start when the map had to grow.
                deliveries.removeAll(keepingCapacity: true)
                if observer != nil { w.appended = [] }
                // Claims are refused once the map is in its reserve; releases, expiries and
                // ends still go into it, so that no disconnect goes unrecorded.
                let before = w.lmdb.usage(txn: w.txn)
                let refusal = before.isInReserve ? Self.reserveRefusal(before) : nil
                // Before claims are decided, sessions past their deadline end, so that the
                // decisions see only live sessions (the R3 cap counts live ones, not the
                // unswept dead). With nothing due this is one cursor positioning.
                var swept: [LedgerEvent] = []
                if refusal == nil, batch.contains(where: \.isClaim) {
                    swept = try Self.expireDue(&w, now: now, limit: Int.max, reason: .sessionExpired)
                }
                for command in batch {
                    switch command {
                    case .claim(let request, let done):
                        if let refusal {
                            deliveries.append { done(.failure(refusal)) }
                            continue
                        }
                        let outcome = try Self.decide(request, in: &w, policy: policy, now: now)
                        deliveries.append { done(.success(outcome)) }
                    case .release(let request, let done):
                        let event = try Self.release(request, in: &w, policy: policy)
                        deliveries.append { done(.success(event)) }
                    case .releaseAll(let requests, let done):
                        var events: [LedgerEvent?] = []
                        events.reserveCapacity(requests.count)
                        for request in requests { events.append(try Self.release(request, in: &w, policy: policy)) }
                        deliveries.append { [events] in done(.success(events)) }
                    case .expire(let limit, let done):
                        let events = swept + (try Self.expireDue(&w, now: now, limit: limit, reason: .sessionExpired))
                        swept = []
                        deliveries.append { done(.success(events)) }
                    case .end(let name, let reason, let done):
                        let events = try Self.end(name, reason: reason, in: &w)
                        deliveries.append { done(.success(events)) }
                    case .trim(let boundary, let done):
                        let result = try Self.trim(&w, through: boundary)
                        deliveries.append { done(result) }
                    case .record(let drafts, let done):
                        // Another authority's grant is a claim too: not into the reserve.
                        if let refusal, drafts.contains(where: { $0.kind == .connected }) {
                            deliveries.append { done(.failure(refusal)) }
                            continue
                        }
                        let events = try Self.record(drafts, in: &w)
                        deliveries.append { done(.success(events)) }
                    }
                }
                try Self.checkpointIfDue(&w, every: checkpointEvery)
                usage = w.lmdb.usage(txn: w.txn)
            }
            let events = Int(w.head.sequence - head.sequence)
            head = w.head
            counts?.live += w.liveDelta
            counts?.connected += w.connectedDelta
            published.withLock { $0 = (head, counts) }
            if let usage { publishedUsage.withLock { $0 = usage } }
            highestConnection = w.highestConnection
            onCommit?(CommitStatistics(
                requests: batch.count, events: events,
                microseconds: Int64(DispatchTime.now().uptimeNanoseconds - started) / 1000,
                syncMicroseconds: Int64(w.commitNanoseconds / 1000)))
            let committed = AwaitingMeta(batch: batch, events: w.appended, deliveries: deliveries)
            if !store.lmdb.deferredMetaSync {
                answer(committed)
            } else if store.lmdb.lmdb.lastTransactionID != transactionBefore {
                // This commit's flush made the previous commit's meta page durable.
                if let earlier = awaitingMeta {
                    awaitingMeta = nil
                    answer(earlier)
                }
                awaitingMeta = committed
            } else {
                // Nothing changed, nothing was flushed: answered once the previous commit is durable.
                syncMeta()
                answer(committed)
            }
        } catch {
            // Whether the failed commit flushed anything is unknown: the previous one is synced
            // before it is answered.
            syncMeta()
            onCommitFailure?(error)
            for command in batch { command.fail(error) }
        }
    }

    /// Hands a durable commit's events to the observer, then answers its requests.
    private func answer(_ commit: AwaitingMeta) {
        if let observer = onEvents, let events = commit.events, !events.isEmpty { observer(events) }
        for deliver in commit.deliveries { deliver() }
    }

    /// Makes the last commit's meta page durable (one flush) and answers it, when one waits:
    /// the writer thread does this whenever no other batch follows at once, and before it stops.
    /// If the flush fails, nobody of that commit is told it succeeded (R8).
    private func syncMeta() {
        guard let commit = awaitingMeta else { return }
        awaitingMeta = nil
        do {
            try store.lmdb.syncMeta()
            answer(commit)
        } catch {
            onCommitFailure?(error)
            for command in commit.batch { command.fail(error) }
        }
    }

    static func decide(
        _ request: ClaimRequest, in w: inout LedgerWriteTransaction, policy: NamespacePolicy, now: Int64
    ) throws(LedgerError) -> ClaimOutcome {
        // Names that fail R1/R7 are rejected without touching the projection (and empty
        // names cannot be LMDB keys).
        let lookUp = request.sessionName.isValid && request.authenticationName.isValid
            && request.identity == .authenticated
        let sessionKey = lookUp ? ProjectionFormat.sessionKey(request.sessionName) : []
        var entry = lookUp ? try w.session(sessionKey) : nil
        let liveSessions = lookUp ? try w.liveCount(ProjectionFormat.clientKey(request.authenticationName)) : 0
        let plan = SessionRules.plan(
            request, current: entry, requesterLiveSessions: liveSessions, policy: policy, now: now)
        var last: LedgerEvent?
        for draft in plan.events {
            (last, entry) = try w.append(draft, current: entry, sessionKey: sessionKey)
        }
        let sequence = last!.sequence
        switch plan.decision {
        case .grant(let present, let expiry, let replaced):
            return .granted(SessionGrant(
                sequence: sequence, connection: request.connection, sessionPresent: present,
                expiryInterval: expiry, replacedConnection: replaced))
        case .reject(let reason):
            return .rejected(reason, sequence: sequence)
        }
    }

    /// Moves the archive boundary to `boundary`: deletes the live records up to it, once the
    /// record there is the one the archive holds (same stored hash), and only records behind
    /// the newest checkpoint. A refusal is an answer, not a failure of the batch.
    static func trim(
        _ w: inout LedgerWriteTransaction, through boundary: ArchiveBoundary
    ) throws(LedgerError) -> Result<Void, LedgerError> {
        let through = boundary.sequence
        guard through > w.archivedThrough else { return .success(()) }
        guard through < w.lastCheckpoint else {
            return .failure(.corruptRecord(table: "log", detail: "refused to archive through \(through): not behind the newest checkpoint \(w.lastCheckpoint)"))
        }
        guard let record = try readRecordBytes(txn: w.txn, lmdb: w.lmdb, sequence: through),
              record.withUnsafeBytes({ EventRecordFormat.storedHash($0) }) == boundary.hash
        else {
            return .failure(.corruptRecord(table: "log", detail: "refused to archive through \(through): the live record is not the archived one"))
        }
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(w.txn, w.lmdb.log, &cursor), "mdb_cursor_open")
        defer { mdb_cursor_close(cursor) }
        var key = MDB_val()
        var value = MDB_val()
        var code = mdb_cursor_get(cursor, &key, &value, MDB_FIRST)
        while code == 0 {
            guard key.bytes.loadUnaligned(as: UInt64.self) <= through else { break }
            try check(mdb_cursor_del(cursor, 0), "mdb_cursor_del log")
            // After a delete, MDB_NEXT yields the key that took the deleted one's place.
            code = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)
        }
        if code != 0 && code != MDB_NOTFOUND { try check(code, "mdb_cursor_get log") }
        w.archivedThrough = through
        w.archivedHash = boundary.hash
        w.archivedTimestamp = boundary.timestamp
        w.archiveChanged = true
        return .success(())
    }

    /// Deletes the live records through `boundary` (see `trim`); answers once it is committed.
    public func trim(through boundary: ArchiveBoundary, _ done: @escaping @Sendable (Result<Void, LedgerError>) -> Void) {
        enqueue(.trim(boundary, done))
    }

    /// Appends events decided elsewhere (a cluster's etcd), each applied to the projection as
    /// its kind says (`SessionTransition`), whatever the projection held before: this
    /// ledger records what its node was told, the deciding is not its own. Events with a
    /// `connected` among them are refused (R8) once the map is in its reserve, as claims are.
    public func record(_ events: [LedgerEvent], _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void) {
        enqueue(.record(events, done))
    }

    static func record(_ drafts: [LedgerEvent], in w: inout LedgerWriteTransaction) throws(LedgerError) -> [LedgerEvent] {
        var events: [LedgerEvent] = []
        for draft in drafts {
            let named = draft.sessionName.isValid && draft.authenticationName.isValid
            if case .rejected = draft.kind, !named {
                events.append(try w.append(draft, current: nil, sessionKey: []).0)
                continue
            }
            let key = ProjectionFormat.sessionKey(draft.sessionName)
            events.append(try w.append(draft, current: try w.session(key), sessionKey: key).0)
        }
        return events
    }

    static func end(
        _ name: SessionName, reason: ExpiryReason, in w: inout LedgerWriteTransaction
    ) throws(LedgerError) -> [LedgerEvent] {
        guard name.isValid else { return [] }
        let key = ProjectionFormat.sessionKey(name)
        var entry = try w.session(key)
        guard let live = entry else { return [] }
        var events: [LedgerEvent] = []
        for draft in SessionRules.forcedEnd(of: live, named: name, reason: reason) {
            let (event, next) = try w.append(draft, current: entry, sessionKey: key)
            events.append(event)
            entry = next
        }
        return events
    }

    static func release(
        _ request: ReleaseRequest, in w: inout LedgerWriteTransaction, policy: NamespacePolicy
    ) throws(LedgerError) -> LedgerEvent? {
        guard request.sessionName.isValid else { return nil }
        let key = ProjectionFormat.sessionKey(request.sessionName)
        let entry = try w.session(key)
        guard let draft = SessionRules.release(
            request.connection, of: request.sessionName, reason: request.reason,
            newExpiryInterval: request.newExpiryInterval, current: entry, policy: policy,
            remoteAddress: request.remoteAddress)
        else { return nil }
        return try w.append(draft, current: entry, sessionKey: key).0
    }
}
