import CLMDB
import Foundation
import LedgerCore

/// The whole log as one sequence: the archive's segments in order, then the live log from
/// where they end. Every segment is loaded and checked (`ArchiveSegment.load`), must start
/// where the one before ended and chain to its last hash; the live log must follow the last
/// segment, and the segments must reach the archive boundary stored in the ledger. A live
/// record that a segment also holds (a move that a crash interrupted) is read once, from
/// the segment. A missing segment is named by the range it must have held.
public enum ArchivedLog {
    /// Walks every record from sequence 1 (or the first one after `from`). `keep` receives
    /// each loaded segment, for callers whose results point into it; otherwise each is
    /// released once walked. `body` returns false to stop. Answers the first problem of the
    /// archive's structure (a missing or altered segment, a broken link); problems inside the
    /// live log are the caller's to find, as it checks each record.
    public static func walk(
        _ snapshot: LedgerSnapshot, archive directory: String?, from: UInt64 = 1,
        keep: ((LoadedSegment) -> Void)? = nil,
        _ body: (UInt64, UnsafeRawBufferPointer) throws -> Bool
    ) throws -> VerifyProblem? {
        let boundary = try snapshot.archiveBoundary()
        let segments = directory.map(ArchiveSegment.list) ?? []
        if boundary == nil && segments.isEmpty {
            try snapshot.forEachRecord(from: from, body)
            return nil
        }
        guard let directory else {
            return .archiveDamaged(
                segment: ArchiveSegment.fileName(first: 1, last: boundary!.sequence),
                detail: "records 1–\(boundary!.sequence) are archived and no archive directory was given")
        }
        var expected: UInt64 = 1
        var previous = ChainHash.genesis
        for (name, range) in segments {
            if range.upperBound < expected { continue }  // a stray copy of an earlier range
            guard range.lowerBound == expected else {
                let missing = ArchiveSegment.fileName(first: expected, last: range.lowerBound - 1)
                return .archiveDamaged(segment: missing, detail: "missing: no segment holds records \(expected)–\(range.lowerBound - 1)")
            }
            // Segments wholly before `from` are only checked for their links, from their headers.
            if range.upperBound < from, let header = try? ArchiveSegment.header(at: directory + "/" + name),
               header.previousHash == previous, header.first == range.lowerBound, header.last == range.upperBound
            {
                previous = header.lastHash
                expected = range.upperBound + 1
                continue
            }
            let segment: LoadedSegment
            do throws(SegmentError) {
                segment = try ArchiveSegment.load(directory + "/" + name)
            } catch {
                return .archiveDamaged(segment: error.segment, detail: error.detail)
            }
            guard segment.header.previousHash == previous else {
                return .archiveDamaged(
                    segment: name, detail: "altered or out of place: it does not chain to the record before it (\(expected - 1))")
            }
            let goOn = try segment.forEachRecord(from: from, body)
            keep?(segment)
            previous = segment.header.lastHash
            expected = range.upperBound + 1
            if !goOn { return nil }
        }
        let archivedThrough = boundary?.sequence ?? 0
        if archivedThrough >= expected {
            let missing = ArchiveSegment.fileName(first: expected, last: archivedThrough)
            return .archiveDamaged(segment: missing, detail: "missing: no segment holds records \(expected)–\(archivedThrough)")
        }
        if let boundary, boundary.sequence == expected - 1, boundary.hash != previous {
            return .archiveDamaged(
                segment: ArchiveSegment.fileName(first: segments.last!.range.lowerBound, last: segments.last!.range.upperBound),
                detail: "altered: its last hash is not the one the ledger recorded when it archived it")
        }
        // The live log from where the segments end; the first live record must chain to them.
        var linkProblem: VerifyProblem?
        var first = true
        try snapshot.forEachRecord(from: max(expected, from)) { key, bytes in
            if first && key == expected {
                first = false
                guard EventRecordFormat.chainHash(of: bytes, previous: previous) == EventRecordFormat.storedHash(bytes) else {
                    let last = segments.last!.name
                    linkProblem = .archiveDamaged(segment: last, detail: "the live log's first record \(key) does not chain to it")
                    return false
                }
            }
            first = false
            return try body(key, bytes)
        }
        return linkProblem
    }
}

/// Moves old records out of the live log into archive segments, in the background:
/// one segment per span between two checkpoints (from the boundary to the record before
/// the next checkpoint), once the whole span is older than the retention or the live log is
/// over its size. The segment is written, fsynced and renamed into place (and the directory
/// fsynced) first; only then are the live records deleted, through the writer, in small
/// batches that share its group commits. A crash leaves the segment and the live records, or
/// the segment alone: the next pass (and `completePendingMove` at open) finishes the move.
public final class LedgerArchiver: @unchecked Sendable {
    public struct Policy: Sendable {
        /// Records older than this (µs) are archived; nil: no age limit.
        public var retention: Int64?
        /// The live log is archived down to this size (its pages in bytes); nil: no limit.
        public var maxLiveBytes: Int?
        /// Live records deleted per writer command.
        public var deleteBatch: Int
        /// Seconds between passes when there was nothing to do.
        public var interval: Double

        public init(retention: Int64?, maxLiveBytes: Int?, deleteBatch: Int = 500, interval: Double = 5) {
            self.retention = retention
            self.maxLiveBytes = maxLiveBytes
            self.deleteBatch = deleteBatch
            self.interval = interval
        }
    }

    public let store: LedgerStore
    public let writer: LedgerWriter
    public let directory: String
    public let policy: Policy
    let clock: LedgerClock
    /// Observes each segment once its live records are gone. Set before `start()`.
    public var onArchived: (@Sendable (SegmentHeader) -> Void)?
    /// Observes a pass that failed (the next pass tries again). Set before `start()`.
    public var onFailure: (@Sendable (Error) -> Void)?

    private let condition = NSCondition()
    private var stopping = false
    private var running = false
    private var finished = true

    public init(store: LedgerStore, writer: LedgerWriter, directory: String, policy: Policy, clock: @escaping LedgerClock = wallClockMicroseconds) {
        self.store = store
        self.writer = writer
        self.directory = directory
        self.policy = policy
        self.clock = clock
    }

    /// The bytes the archive's segment files take.
    public static func archiveBytes(_ directory: String) -> Int {
        ArchiveSegment.list(directory).reduce(0) { total, segment in
            let size = (try? FileManager.default.attributesOfItem(atPath: directory + "/" + segment.name)[.size] as? Int) ?? 0
            return total + (size ?? 0)
        }
    }

    public func start() {
        condition.lock()
        precondition(!running)
        running = true
        finished = false
        condition.unlock()
        let thread = Thread { [self] in run() }
        thread.name = "custody-archive"
        thread.start()
    }

    /// Stops after the step in progress (a segment is finished, or left for the next start).
    public func stop() {
        condition.lock()
        guard running else {
            condition.unlock()
            return
        }
        stopping = true
        condition.broadcast()
        while !finished { condition.wait() }
        running = false
        stopping = false
        condition.unlock()
    }

    private var isStopping: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopping
    }

    private func run() {
        while !isStopping {
            var worked = false
            do {
                worked = try runOnce()
            } catch {
                onFailure?(error)
            }
            if worked { continue }
            condition.lock()
            if !stopping { _ = condition.wait(until: Date(timeIntervalSinceNow: policy.interval)) }
            condition.unlock()
        }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    /// One step: finishes a move a crash interrupted, or archives one span. True when it did.
    @discardableResult
    public func runOnce() throws -> Bool {
        if try completePendingMove() { return true }
        guard let span = try nextSpan() else { return false }
        let (records, previous) = try store.read { snapshot -> ([[UInt8]], ChainHash) in
            let previous = try snapshot.archiveBoundary()?.hash ?? .genesis
            var records: [[UInt8]] = []
            records.reserveCapacity(Int(span.upperBound - span.lowerBound + 1))
            var hash = previous
            var expected = span.lowerBound
            var problem: String?
            try snapshot.forEachRecord(from: span.lowerBound) { key, bytes in
                guard key <= span.upperBound else { return false }
                guard key == expected else {
                    problem = "sequence gap at \(expected)"
                    return false
                }
                if let failure = LogRecordCheck.problem(bytes, sequence: key) {
                    problem = "record \(key): \(failure)"
                    return false
                }
                guard EventRecordFormat.chainHash(of: bytes, previous: hash) == EventRecordFormat.storedHash(bytes) else {
                    problem = "record \(key) does not match its hash chain"
                    return false
                }
                hash = EventRecordFormat.storedHash(bytes)
                records.append(Array(bytes))
                expected += 1
                return true
            }
            if let problem { throw LedgerError.corruptRecord(table: "log", detail: "not archived: \(problem)") }
            guard expected == span.upperBound + 1 else {
                throw LedgerError.corruptRecord(table: "log", detail: "not archived: records end at \(expected - 1)")
            }
            return (records, previous)
        }
        let header = try ArchiveSegment.write(records: records, first: span.lowerBound, previousHash: previous, to: directory)
        try trim(records: records, first: span.lowerBound)
        onArchived?(header)
        return true
    }

    /// Deletes the live records a segment in the archive already holds, if any (the end of
    /// a move a crash interrupted). True when there was such a move.
    @discardableResult
    public func completePendingMove() throws -> Bool {
        ArchiveSegment.removeTemporaryFiles(in: directory)
        let boundary = try store.read { try $0.archiveBoundary() }?.sequence ?? 0
        guard let pending = ArchiveSegment.list(directory).first(where: { $0.range.contains(boundary + 1) }) else { return false }
        let segment: LoadedSegment
        do throws(SegmentError) {
            segment = try ArchiveSegment.load(directory + "/" + pending.name)
        } catch {
            throw LedgerError.corruptRecord(table: "archive", detail: "\(error)")
        }
        var records: [[UInt8]] = []
        _ = segment.forEachRecord { _, bytes in
            records.append(Array(bytes))
            return true
        }
        try trim(records: records, first: segment.header.first, after: boundary)
        return true
    }

    /// Moves the boundary through the records, a batch at a time, each through the writer.
    private func trim(records: [[UInt8]], first: UInt64, after boundary: UInt64 = 0) throws {
        let last = first + UInt64(records.count) - 1
        var through = max(boundary, first - 1)
        while through < last {
            through = min(last, through + UInt64(max(1, policy.deleteBatch)))
            let record = records[Int(through - first)]
            let target = record.withUnsafeBytes {
                ArchiveBoundary(
                    sequence: through, hash: EventRecordFormat.storedHash($0),
                    timestamp: Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: Int64.self)))
            }
            let done = DispatchSemaphore(value: 0)
            let outcome = Locked<Result<Void, LedgerError>?>(nil)
            writer.trim(through: target) { result in
                outcome.set(result)
                done.signal()
            }
            done.wait()
            try outcome.get()!.get()
        }
    }

    /// The next span to archive: from the boundary to the record before the next checkpoint,
    /// when the retention or the size says so.
    public func nextSpan() throws -> ClosedRange<UInt64>? {
        return try store.read { snapshot -> ClosedRange<UInt64>? in
            let start = (try snapshot.archiveBoundary()?.sequence ?? 0) + 1
            // Checkpoints after the start, newest first, through their back links.
            var checkpoint = try snapshot.lastCheckpoint()
            var next: UInt64?
            while checkpoint > start {
                next = checkpoint
                guard let found = try snapshot.checkpoint(at: checkpoint) else { break }
                checkpoint = found.previousCheckpoint
            }
            guard let end = next.map({ $0 - 1 }), end >= start else { return nil }
            var due = false
            if let retention = policy.retention {
                let lastTime = try snapshot.withRecordBytes(at: end) { bytes in
                    bytes.map { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: Int64.self)) }
                }
                if let lastTime, lastTime < clock() - retention { due = true }
            }
            if let maxLiveBytes = policy.maxLiveBytes, try snapshot.logBytes() > maxLiveBytes { due = true }
            // A ledger whose map is in its reserve refuses CONNECTs: the oldest span goes, whatever its age.
            if snapshot.mapUsage().isInReserve { due = true }
            return due ? start...end : nil
        }
    }
}

/// A value shared with an escaping callback (a class: a `Mutex` local captured by an
/// escaping closure was miscompiled in release builds).
final class Locked<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func set(_ new: Value) {
        lock.lock()
        value = new
        lock.unlock()
    }
    func get() -> Value {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}

extension LedgerSnapshot {
    /// How full the map is, in this snapshot.
    public func mapUsage() -> MapUsage { lmdb.usage(txn: txn) }

    /// The bytes the live log's pages take.
    public func logBytes() throws -> Int {
        var stat = MDB_stat()
        try check(mdb_stat(txn, lmdb.log, &stat), "mdb_stat log")
        return Int(stat.ms_branch_pages + stat.ms_leaf_pages + stat.ms_overflow_pages) * Int(stat.ms_psize)
    }

    /// The live log's first sequence number and its record's timestamp; nil when it is empty.
    public func firstLiveRecord() throws -> (sequence: UInt64, timestamp: Int64)? {
        var found: (UInt64, Int64)?
        try forEachRecord(from: 0) { key, bytes in
            found = (key, Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 24, as: Int64.self)))
            return false
        }
        return found
    }
}
