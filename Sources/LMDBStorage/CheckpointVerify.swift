import CLMDB
import LedgerCore

/// `verify` from the newest checkpoint: the projection the checkpoint describes is rebuilt
/// from the stored projection (less the sessions begun after it) and the `prior` table (each
/// session the checkpoint held and changed since, as it was then), proved against the checkpoint's chained digest and counts, and the
/// records after it are chained onto the checkpoint's hash and replayed onto it; what that
/// gives must be the stored head and projection. Its cost follows the live sessions and the
/// records since the checkpoint, not the log's length. The whole log, archive included,
/// is still `verify(archive:)`.
extension LedgerSnapshot {
    /// The checkpoint whose entries the `prior` table holds; 0 when it holds none usable.
    func priorCheckpoint() throws(LedgerError) -> UInt64 {
        guard lmdb.prior != 0,
              let bytes = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.prior), bytes.count == 8
        else { return 0 }
        return bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// The newest checkpoint and the projection it describes, rebuilt; nil when the ledger has
    /// no checkpoint, or none whose projection can be rebuilt (written before this version kept
    /// `prior`, until its next checkpoint).
    public func projectionAtNewestCheckpoint() throws -> (Checkpoint, OwnershipProjection)? {
        let newest = try lastCheckpoint()
        guard newest > 0, try priorCheckpoint() == newest, let checkpoint = try checkpoint(at: newest) else { return nil }
        var entries: [SessionName: SessionEntry] = [:]
        var names: [[UInt8]: SessionName] = [:]
        try scan(lmdb.sessions, first: nil) { key, value in
            let (name, entry) = try decodeEntry(value, table: "sessions")
            // A session begun after the checkpoint was not in it (and has no `prior` entry,
            // unless an earlier version wrote one of kind 0).
            if entry.firstSequence <= newest { entries[name] = entry }
            names[Array(key)] = name
            return true
        }
        try scan(lmdb.prior, first: nil) { key, value in
            guard let kind = value.first else { throw LedgerError.corruptRecord(table: "prior", detail: "empty entry") }
            if let stored = names[Array(key)] { entries[stored] = nil }
            if kind == 1 {
                let (name, entry) = try decodeEntry(UnsafeRawBufferPointer(rebasing: value[1...]), table: "prior")
                guard ProjectionFormat.sessionKey(name).elementsEqual(key) else {
                    throw LedgerError.corruptRecord(table: "prior", detail: "entry of \(name) is under another key")
                }
                entries[name] = entry
            } else if kind != 0 {
                throw LedgerError.corruptRecord(table: "prior", detail: "entry kind \(kind)")
            }
            return true
        }
        let projection = OwnershipProjection(entries: entries, lastSequence: newest, lastTimestamp: checkpoint.timestamp)
        return (checkpoint, projection)
    }

    /// Verifies from the newest checkpoint (see the extension's note); the whole log when the
    /// ledger has no checkpoint to start from. `checkedFrom` says which.
    public func verifyFromNewestCheckpoint(archive: String? = nil) throws -> VerifyReport {
        try verifySinceNewestCheckpoint(archive: archive) ?? verify(archive: archive)
    }

    /// Verifies from the newest checkpoint; nil when there is none to start from. The
    /// archive's structure is checked too, from the segments' headers: every segment present
    /// and linked to the next, the last to the ledger's archive boundary (a segment's records
    /// are read only by the whole-log `verify(archive:)`).
    public func verifySinceNewestCheckpoint(archive: String? = nil) throws -> VerifyReport? {
        guard let (checkpoint, atCheckpoint) = try projectionAtNewestCheckpoint() else { return nil }
        let start = checkpoint.sequence
        var report = VerifyReport(events: start, head: .empty, problem: nil, checkedFrom: start)
        if try archiveBoundary() != nil || archive.map({ !ArchiveSegment.list($0).isEmpty }) == true {
            // Segments lie wholly before the newest checkpoint: the walk checks their headers
            // and stops at the first live record from it.
            if let problem = try ArchivedLog.walk(self, archive: archive, from: start, { _, _ in false }) {
                report.problem = problem
                return report
            }
        }
        if let mismatch = Self.compare(checkpoint, atCheckpoint) {
            report.problem = .checkpointMismatch(sequence: start, detail: "the stored projection, taken back to it, differs: \(mismatch)")
            return report
        }
        // The checkpoint record itself: its own chain link where the record before it is at
        // hand (live, or the archive boundary's hash).
        var last = LedgerHead.empty
        var problem: VerifyProblem?
        try withRecordBytes(at: start) { bytes in
            guard let bytes else {
                problem = .unreadableRecord(sequence: start, detail: "the newest checkpoint's record is missing")
                return
            }
            let previous: ChainHash?
            if let boundary = try archiveBoundary(), boundary.sequence == start - 1 {
                previous = boundary.hash
            } else if start == 1 {
                previous = .genesis
            } else {
                previous = try withRecordBytes(at: start - 1) { $0.map { EventRecordFormat.storedHash($0) } }
            }
            let hash = EventRecordFormat.storedHash(bytes)
            if let previous, EventRecordFormat.chainHash(of: bytes, previous: previous) != hash {
                problem = .hashMismatch(sequence: start)
            }
            last = LedgerHead(sequence: start, timestamp: checkpoint.timestamp, hash: hash)
        }
        if let problem {
            report.problem = problem
            return report
        }
        var projection = atCheckpoint
        try forEachRecord(from: start + 1) { key, bytes in
            guard key == last.sequence + 1 else {
                problem = .sequenceGap(expected: last.sequence + 1, found: key)
                return false
            }
            let hash = EventRecordFormat.storedHash(bytes)
            guard EventRecordFormat.chainHash(of: bytes, previous: last.hash) == hash else {
                problem = .hashMismatch(sequence: key)
                return false
            }
            guard !CheckpointRecordFormat.isCheckpoint(bytes) else {
                problem = .unreadableRecord(sequence: key, detail: "a checkpoint after the newest checkpoint \(start)")
                return false
            }
            do {
                let event = try EventRecordFormat.decode(bytes).event
                guard event.sequence == key else {
                    problem = .unreadableRecord(sequence: key, detail: "stored under \(key) but numbered \(event.sequence)")
                    return false
                }
                projection.apply(event)
                last = LedgerHead(sequence: key, timestamp: event.timestamp, hash: hash)
            } catch {
                problem = .unreadableRecord(sequence: key, detail: "\(error)")
                return false
            }
            return true
        }
        report.events = last.sequence
        report.head = last
        report.problem = try problem ?? compare(projection, last)
        return report
    }

    private func decodeEntry(_ bytes: UnsafeRawBufferPointer, table: String) throws -> (SessionName, SessionEntry) {
        do {
            return try ProjectionFormat.decode(bytes)
        } catch {
            throw LedgerError.corruptRecord(table: table, detail: "\(error)")
        }
    }
}
