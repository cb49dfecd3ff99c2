import Foundation
import LMDBStorage
import LedgerCore

/// The embedded ledger: session ownership decided by one LMDB environment and its
/// group-commit writer thread (`LedgerWriter`). The first `SessionAuthority`.
public final class LMDBSessionLedger: SessionAuthority {
    /// The store underneath, for tools and tests that read it directly.
    public let store: LedgerStore
    private let writer: LedgerWriter
    public let recovery: RecoveryReport
    public var policy: NamespacePolicy { writer.policy }
    private let clock: LedgerClock

    /// Opens (or creates) the ledger in `directory`, recovers it and starts the writer.
    /// `onCommit` and `onCommitFailure` observe every batch the writer commits or fails
    /// (for metrics); they run on the writer thread and must be quick. `onEvents` receives
    /// the events of every commit after recovery, in sequence order (recovery's own are in
    /// `recovery.events`). `countSessions`: keep live/connected counts (`sessionCounts`),
    /// at the price of one scan of the sessions at open. `mapSize`: the largest the data
    /// file may grow (bytes); nil keeps the store's default. The map starts small and grows
    /// up to it. `mapReserve`: the part of it kept for recovery, checkpoints, disconnects and
    /// expiries, where claims may not go (nil: `MapReserve.defaultReserve(for:)`).
    public init(
        directory: String, policy: NamespacePolicy = .default, mapSize: Int? = nil, mapReserve: Int? = nil,
        clock: @escaping LedgerClock = wallClockMicroseconds,
        onCommit: (@Sendable (CommitStatistics) -> Void)? = nil,
        onCommitFailure: (@Sendable (LedgerError) -> Void)? = nil,
        onEvents: (@Sendable ([CommittedEvent]) -> Void)? = nil,
        countSessions: Bool = false,
        checkpointEvery: UInt64 = LedgerWriter.defaultCheckpointEvery,
        archive: LedgerArchiver.Policy? = nil,
        archiveDirectory: String? = nil
    ) throws {
        var options = LedgerStoreOptions()
        if let mapSize { options.mapSize = mapSize }
        options.reserve = mapReserve
        let store = try LedgerStore(directory: directory, options: options)
        do {
            let writer = try LedgerWriter(store: store, policy: policy, clock: clock)
            writer.onCommit = onCommit
            writer.onCommitFailure = onCommitFailure
            writer.onEvents = onEvents
            writer.checkpointEvery = checkpointEvery
            self.recovery = try writer.recover()
            if countSessions { try writer.countSessions() }
            writer.start()
            self.writer = writer
            // The archive: segments under DATA/archive (or where given). A move a crash
            // interrupted is finished before anyone is answered; new moves run in the background.
            let archiveDirectory = archiveDirectory ?? (directory as NSString).appendingPathComponent("archive")
            self.archiveDirectory = archiveDirectory
            let archiver = LedgerArchiver(
                store: store, writer: writer, directory: archiveDirectory,
                policy: archive ?? LedgerArchiver.Policy(retention: nil, maxLiveBytes: nil), clock: clock)
            do {
                try archiver.completePendingMove()
            } catch {
                writer.stop()
                throw error
            }
            self.archiver = archive == nil ? nil : archiver
        } catch {
            store.close()
            throw error
        }
        self.store = store
        self.clock = clock
    }

    /// Where the archive's segments are.
    public let archiveDirectory: String
    /// Moves old records to the archive, when a retention was given; started by `startArchiving()`.
    public let archiver: LedgerArchiver?

    /// Starts moving old records to the archive in the background (a retention was given).
    public func startArchiving(
        onArchived: (@Sendable (SegmentHeader) -> Void)? = nil, onFailure: (@Sendable (Error) -> Void)? = nil
    ) {
        guard let archiver else { return }
        archiver.onArchived = onArchived
        archiver.onFailure = onFailure
        archiver.start()
    }

    /// One archiving step now, on the caller's thread (for tests and tools).
    @discardableResult
    public func archiveOnce() throws -> Bool { try archiver?.runOnce() ?? false }

    /// Room taken, live and archived; read now (a read transaction and a look at the archive).
    public func storageFigures() throws -> LedgerStorageFigures {
        let (usage, oldest) = try store.read { snapshot in (snapshot.mapUsage(), try snapshot.firstLiveRecord()?.timestamp) }
        let segments = ArchiveSegment.list(archiveDirectory)
        return LedgerStorageFigures(
            liveBytes: usage.usedBytes, archiveBytes: LedgerArchiver.archiveBytes(archiveDirectory),
            mapUsedRatio: usage.usedRatio, inReserve: usage.isInReserve, oldestLiveEvent: oldest,
            archiveSegments: segments.count)
    }

    /// The live log: its first record's sequence and time, and the bytes its pages take.
    public func liveLog() throws -> (first: UInt64, firstTimestamp: Int64, bytes: Int)? {
        try store.read { snapshot in
            guard let first = try snapshot.firstLiveRecord() else { return nil }
            return (first.sequence, first.timestamp, try snapshot.logBytes())
        }
    }

    public func nextConnectionNumber() -> ConnectionNumber { writer.nextConnectionNumber() }

    public func endSession(
        _ name: SessionName, reason: ExpiryReason, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void
    ) {
        writer.end(name, reason: reason, done)
    }

    public func claim(_ request: ClaimRequest, _ done: @escaping @Sendable (Result<ClaimOutcome, LedgerError>) -> Void) {
        writer.claim(request, done)
    }

    public func release(_ request: ReleaseRequest, _ done: @escaping @Sendable (Result<LedgerEvent?, LedgerError>) -> Void) {
        writer.release(request, done)
    }

    public func releaseAll(
        _ requests: [ReleaseRequest], _ done: @escaping @Sendable (Result<[LedgerEvent?], LedgerError>) -> Void
    ) {
        writer.releaseAll(requests, done)
    }

    /// Appends events another authority decided (a cluster's etcd), in one commit; answers
    /// them stamped (sequence, time) once durable. Refused, as a claim is, once the map is in
    /// its reserve when they hold a `connected` event.
    public func record(_ events: [LedgerEvent], _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void) {
        writer.record(events, done)
    }

    /// The async form of `record(_:_:)`.
    @discardableResult
    public func record(_ events: [LedgerEvent]) async throws(LedgerError) -> [LedgerEvent] {
        let result = await withCheckedContinuation { continuation in
            record(events) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    public func expireDue(limit: Int, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void) {
        writer.expireDue(limit: limit, done)
    }

    public func earliestDeadline() throws -> Int64? {
        try store.read { try $0.earliestDeadline() }
    }

    public func now() -> Int64 { clock() }

    public var sessionCounts: SessionCounts? { writer.sessionCounts }

    public func session(_ name: SessionName) throws -> SessionEntry? {
        try store.read { try $0.session(name) }
    }

    public func liveSessionCount(of client: AuthenticationName) throws -> Int {
        try store.read { try $0.liveSessionCount(of: client) }
    }

    public func liveSessionNames() throws -> Set<SessionName> {
        Set(try liveSessions().keys)
    }

    /// The projection's sessions, by name, from one snapshot.
    public func liveSessions() throws -> [SessionName: SessionEntry] {
        try store.read { snapshot in
            var sessions: [SessionName: SessionEntry] = [:]
            try snapshot.forEachSession { name, entry in sessions[name] = entry }
            return sessions
        }
    }

    public var head: LedgerHead { writer.currentHead }

    /// How full the ledger's map is: after the last commit, or read now before the first.
    public var mapUsage: MapUsage? {
        writer.mapUsage ?? (try? store.mapUsage())
    }

    /// The records of the log from `first` through the head, in sequence order (for audit
    /// and tests; `custody-audit` reads a ledger on its own).
    public func records(from first: UInt64 = 1) throws -> [LedgerRecord] {
        try store.read { snapshot in
            let head = try snapshot.head().sequence
            guard first <= head else { return [] }
            // Archived records come from the archive's segments, the others from the live log.
            var records: [LedgerRecord] = []
            let problem = try ArchivedLog.walk(snapshot, archive: archiveDirectory, from: first) { key, bytes in
                if key >= first, !CheckpointRecordFormat.isCheckpoint(bytes) {
                    records.append(try EventRecordFormat.decode(bytes))
                }
                return true
            }
            if let problem { throw LedgerError.corruptRecord(table: "archive", detail: "\(problem)") }
            return records
        }
    }

    /// Replays the whole log and checks it against the stored projection.
    public func verify() throws -> VerifyReport {
        try store.read { try $0.verify(archive: archiveDirectory) }
    }

    /// Verifies from the newest checkpoint: its projection rebuilt and proved, the records
    /// after it chained and replayed (the whole log when there is no checkpoint to start from).
    public func verifyFromNewestCheckpoint() throws -> VerifyReport {
        try store.read { try $0.verifyFromNewestCheckpoint(archive: archiveDirectory) }
    }

    /// The projection as it stood after the given sequence number or time (archive included).
    public func replay(through limit: ReplayLimit) throws -> OwnershipProjection {
        try store.read { try $0.replay(through: limit, archive: archiveDirectory).0 }
    }

    public func close() {
        archiver?.stop()
        writer.stop()
        store.close()
    }
}
