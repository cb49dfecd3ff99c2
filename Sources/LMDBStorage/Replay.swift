import LedgerCore

/// The first thing found wrong with a ledger.
public enum VerifyProblem: Sendable, Equatable, CustomStringConvertible {
    case unreadableRecord(sequence: UInt64, detail: String)
    case sequenceGap(expected: UInt64, found: UInt64)
    case hashMismatch(sequence: UInt64)
    case headMismatch(detail: String)
    case projectionMismatch(detail: String)
    /// A checkpoint record states a projection the log before it does not imply.
    case checkpointMismatch(sequence: UInt64, detail: String)
    /// An archive segment is missing, altered or does not link to its neighbours.
    case archiveDamaged(segment: String, detail: String)

    /// The first sequence number that is bad, where the problem lies in the log.
    public var firstBadSequence: UInt64? {
        switch self {
        case .unreadableRecord(let s, _), .hashMismatch(let s), .checkpointMismatch(let s, _): s
        case .sequenceGap(let expected, _): expected
        case .headMismatch, .projectionMismatch, .archiveDamaged: nil
        }
    }

    public var description: String {
        switch self {
        case .unreadableRecord(let s, let d): "record \(s) is unreadable: \(d)"
        case .sequenceGap(let e, let f): "sequence gap: expected \(e), found \(f)"
        case .hashMismatch(let s): "record \(s) does not match its hash chain (edited, or a record before it was)"
        case .headMismatch(let d): "log head does not match: \(d)"
        case .projectionMismatch(let d): "stored projection disagrees with the log: \(d)"
        case .checkpointMismatch(let s, let d): "checkpoint \(s) disagrees with the log before it: \(d)"
        case .archiveDamaged(let segment, let d): "archive segment \(segment): \(d)"
        }
    }
}

public struct VerifyReport: Sendable, Equatable {
    public var events: UInt64
    public var head: LedgerHead
    public var problem: VerifyProblem?
    /// The first record read: 1 for the whole log, or the checkpoint the check started from.
    public var checkedFrom: UInt64 = 1
    public var isIntact: Bool { problem == nil }
}

/// Where a replay stops.
public enum ReplayLimit: Sendable {
    case end
    /// Through this sequence number, inclusive.
    case sequence(UInt64)
    /// Through the last event at or before this time (µs since the epoch).
    case time(Int64)
}

extension LedgerSnapshot {
    /// Folds the log into a projection, checking record format, density and (optionally)
    /// the hash chain on the way. Stops at the first problem.
    /// With `archive`, the archive's segments are read first (`ArchivedLog`); a ledger that
    /// archived records cannot be replayed without them.
    public func replay(
        through limit: ReplayLimit = .end, checkingChain: Bool = true, archive: String? = nil,
        observe: ((LedgerEvent) throws -> Void)? = nil
    ) throws -> (OwnershipProjection, LedgerHead, VerifyProblem?) {
        // Without an observer nobody needs whole events: the string-free fold is used.
        var fold = LogFold()
        var projection = OwnershipProjection()
        var last = LedgerHead.empty
        var problem: VerifyProblem?
        let newestCheckpoint = try lastCheckpoint()
        let archiveProblem = try ArchivedLog.walk(self, archive: archive) { key, bytes in
            let expected = last.sequence + 1
            guard key == expected else {
                problem = .sequenceGap(expected: expected, found: key)
                return false
            }
            if case .sequence(let through) = limit, key > through { return false }
            if CheckpointRecordFormat.isCheckpoint(bytes) {
                let checkpoint: Checkpoint
                do {
                    checkpoint = try CheckpointRecordFormat.decode(bytes)
                } catch {
                    problem = .unreadableRecord(sequence: key, detail: "\(error)")
                    return false
                }
                guard checkpoint.sequence == key else {
                    problem = .unreadableRecord(sequence: key, detail: "stored under \(key) but numbered \(checkpoint.sequence)")
                    return false
                }
                if case .time(let time) = limit, checkpoint.timestamp > time { return false }
                let hash = EventRecordFormat.storedHash(bytes)
                if checkingChain {
                    guard EventRecordFormat.chainHash(of: bytes, previous: last.hash) == hash else {
                        problem = .hashMismatch(sequence: key)
                        return false
                    }
                    // The newest checkpoint is proved against the fold (each costs a pass over
                    // the live sessions); the others are held by the chain.
                    if key == newestCheckpoint, let mismatch = Self.compare(checkpoint, observe == nil ? fold.projection : projection) {
                        problem = .checkpointMismatch(sequence: key, detail: mismatch)
                        return false
                    }
                }
                last = LedgerHead(sequence: key, timestamp: checkpoint.timestamp, hash: hash)
                return true
            }
            let header: EventRecordFormat.Header
            do {
                header = try EventRecordFormat.header(bytes)
            } catch {
                problem = .unreadableRecord(sequence: key, detail: "\(error)")
                return false
            }
            guard header.sequence == key else {
                problem = .unreadableRecord(sequence: key, detail: "stored under \(key) but numbered \(header.sequence)")
                return false
            }
            if case .time(let time) = limit, header.timestamp > time { return false }
            let hash = EventRecordFormat.storedHash(bytes)
            if checkingChain {
                guard EventRecordFormat.chainHash(of: bytes, previous: last.hash) == hash else {
                    problem = .hashMismatch(sequence: key)
                    return false
                }
            }
            do {
                if let observe {
                    let event = try EventRecordFormat.decode(bytes).event
                    projection.apply(event)
                    try observe(event)
                } else {
                    try fold.apply(record: bytes, header: header)
                }
            } catch let error as RecordFormatError {
                problem = .unreadableRecord(sequence: key, detail: "\(error)")
                return false
            }
            last = LedgerHead(sequence: key, timestamp: header.timestamp, hash: hash)
            return true
        }
        return (observe == nil ? fold.projection : projection, last, problem ?? archiveProblem)
    }

    /// How a checkpoint differs from the projection folded up to it; nil when it does not.
    static func compare(_ checkpoint: Checkpoint, _ projection: OwnershipProjection) -> String? {
        let live = UInt64(projection.sessions.count)
        let disconnected = UInt64(projection.sessions.values.filter { !$0.isConnected }.count)
        let clients = UInt64(projection.liveSessionCounts.count)
        guard checkpoint.liveSessions == live, checkpoint.disconnectedSessions == disconnected,
              checkpoint.clients == clients
        else {
            return "it counts \(checkpoint.liveSessions) live sessions (\(checkpoint.disconnectedSessions) disconnected) of \(checkpoint.clients) clients, the log \(live) (\(disconnected)) of \(clients)"
        }
        let digest = ProjectionDigest.of(projection)
        guard checkpoint.digest == digest else {
            return "its projection digest is \(checkpoint.digest), the log's \(digest)"
        }
        return nil
    }

    /// The projection's running digest as stored (nil in a ledger that never kept one).
    public func storedDigest() throws(LedgerError) -> ProjectionDigest? {
        guard let bytes = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.digest), bytes.count == 32 else { return nil }
        return bytes.withUnsafeBytes { ProjectionDigest(bytes: $0) }
    }

    /// The newest checkpoint's sequence number, 0 when there is none.
    public func lastCheckpoint() throws(LedgerError) -> UInt64 {
        guard let bytes = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.checkpoint), bytes.count == 8 else { return 0 }
        return bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// The archive boundary: the last archived record, nil when nothing was archived.
    public func archiveBoundary() throws(LedgerError) -> ArchiveBoundary? {
        try readArchiveBoundary(txn: txn, lmdb: lmdb)
    }

    /// Replays the whole log and proves the stored head and projection equal what it implies.
    public func verify(archive: String? = nil) throws -> VerifyReport {
        let (projection, last, problem) = try replay(archive: archive)
        var report = VerifyReport(events: last.sequence, head: last, problem: problem)
        guard problem == nil else { return report }
        report.problem = try compare(projection, last)
        return report
    }

    func compare(_ projection: OwnershipProjection, _ last: LedgerHead) throws -> VerifyProblem? {
        let stored = try head()
        guard stored == last else {
            return .headMismatch(detail: "stored head is \(stored.sequence)/\(stored.hash), log ends at \(last.sequence)/\(last.hash)")
        }

        var expectedSessions = projection.sessions
        var mismatch: VerifyProblem?
        do {
            try forEachSession { name, entry in
                guard mismatch == nil else { return }
                guard let replayed = expectedSessions.removeValue(forKey: name) else {
                    mismatch = .projectionMismatch(detail: "session \(name) is stored but free in the log")
                    return
                }
                if replayed != entry {
                    mismatch = .projectionMismatch(detail: "session \(name) is stored as \(entry), the log says \(replayed)")
                }
            }
        } catch let error as LedgerError {
            return .projectionMismatch(detail: "\(error)")
        }
        if let mismatch { return mismatch }
        if let (name, _) = expectedSessions.first {
            return .projectionMismatch(detail: "session \(name) is live in the log but missing from the projection")
        }

        var expectedCounts: [[UInt8]: Int] = [:]
        for (key, count) in projection.liveSessionCounts {
            expectedCounts[ProjectionFormat.key(for: key)] = count
        }
        var countProblem: VerifyProblem?
        try forEachClientCount { key, count in
            guard countProblem == nil else { return }
            let replayed = expectedCounts.removeValue(forKey: key)
            if replayed != count {
                countProblem = .projectionMismatch(
                    detail: "client \(String(decoding: key, as: UTF8.self)) has \(count) live sessions stored, the log says \(replayed ?? 0)")
            }
        }
        if let countProblem { return countProblem }
        if let (key, count) = expectedCounts.first {
            return .projectionMismatch(
                detail: "client \(String(decoding: key, as: UTF8.self)) has \(count) live sessions in the log but none stored")
        }

        var expectedDeadlines = projection.deadlineKeys
        var deadlineProblem: VerifyProblem?
        try forEachDeadlineKey { key in
            if expectedDeadlines.remove(Array(key)) == nil {
                deadlineProblem = .projectionMismatch(detail: "the expiry index holds a deadline the log does not imply")
                return false
            }
            return true
        }
        if let deadlineProblem { return deadlineProblem }
        if !expectedDeadlines.isEmpty {
            return .projectionMismatch(detail: "\(expectedDeadlines.count) expiry deadline(s) missing from the index")
        }
        // Last, the running digest the writer keeps (and checkpoints copy).
        if let storedDigest = try storedDigest() {
            let digest = ProjectionDigest.of(projection)
            guard storedDigest == digest else {
                return .projectionMismatch(detail: "the stored projection digest is \(storedDigest), the log's \(digest)")
            }
        }
        return nil
    }
}
