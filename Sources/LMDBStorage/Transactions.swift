import CLMDB
import LedgerCore

/// A consistent read-only view of the ledger (an LMDB read transaction).
/// Valid only inside the closure that received it.
public struct LedgerSnapshot {
    let txn: OpaquePointer
    let lmdb: LedgerEnvironment

    public func head() throws(LedgerError) -> LedgerHead {
        try readHead(txn: txn, lmdb: lmdb)
    }

    public func session(_ name: SessionName) throws(LedgerError) -> SessionEntry? {
        try readSession(txn: txn, lmdb: lmdb, key: ProjectionFormat.sessionKey(name))?.1
    }

    public func liveSessionCount(of client: AuthenticationName) throws(LedgerError) -> Int {
        try readLiveCount(txn: txn, lmdb: lmdb, key: ProjectionFormat.clientKey(client))
    }

    /// The connection number ever recorded highest, so new ones never repeat it.
    public func highestConnection() throws(LedgerError) -> UInt64 {
        guard let bytes = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.connections) else { return 0 }
        guard bytes.count == 8 else { throw .corruptRecord(table: "meta", detail: "connections") }
        return bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    }

    /// The raw record of a sequence number, without decoding.
    public func withRecordBytes<R>(at sequence: UInt64, _ body: (UnsafeRawBufferPointer?) throws -> R) throws -> R {
        var key = sequence
        return try withUnsafeMutableBytes(of: &key) { keyBytes in
            var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
            var value = MDB_val()
            let code = mdb_get(txn, lmdb.log, &k, &value)
            if code == MDB_NOTFOUND { return try body(nil) }
            try check(code, "mdb_get log")
            return try body(value.bytes)
        }
    }

    /// The event stored at a sequence number; nil when there is none, or a checkpoint is.
    public func record(at sequence: UInt64) throws -> LedgerRecord? {
        try withRecordBytes(at: sequence) { bytes in
            guard let bytes, !CheckpointRecordFormat.isCheckpoint(bytes) else { return nil }
            do {
                return try EventRecordFormat.decode(bytes)
            } catch {
                throw LedgerError.corruptRecord(table: "log", detail: "sequence \(sequence): \(error)")
            }
        }
    }

    /// The checkpoint stored at a sequence number; nil when there is none, or an event is.
    public func checkpoint(at sequence: UInt64) throws -> Checkpoint? {
        try withRecordBytes(at: sequence) { bytes in
            guard let bytes, CheckpointRecordFormat.isCheckpoint(bytes) else { return nil }
            do {
                return try CheckpointRecordFormat.decode(bytes)
            } catch {
                throw LedgerError.corruptRecord(table: "log", detail: "sequence \(sequence): \(error)")
            }
        }
    }

    /// Walks the log from `sequence` on, in order, with each record's key and raw bytes.
    /// The body returns false to stop.
    public func forEachRecord(
        from sequence: UInt64 = 1, _ body: (UInt64, UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        var start = sequence
        try withUnsafeMutableBytes(of: &start) { startBytes in
            var key = MDB_val(mv_size: 8, mv_data: startBytes.baseAddress)
            try scan(lmdb.log, first: &key) { k, v in
                try body(k.loadUnaligned(as: UInt64.self), v)
            }
        }
    }

    /// Every stored session entry, in key order.
    public func forEachSession(_ body: (SessionName, SessionEntry) throws -> Void) throws {
        try scan(lmdb.sessions, first: nil) { key, value in
            do {
                let (name, entry) = try ProjectionFormat.decode(value)
                guard ProjectionFormat.sessionKey(name).elementsEqual(key) else {
                    throw LedgerError.corruptRecord(table: "sessions", detail: "entry of \(name) is under another key")
                }
                try body(name, entry)
            } catch let error as RecordFormatError {
                throw LedgerError.corruptRecord(table: "sessions", detail: "\(error)")
            }
            return true
        }
    }

    /// Every stored live-session count, by client key.
    public func forEachClientCount(_ body: ([UInt8], Int) throws -> Void) throws {
        try scan(lmdb.clients, first: nil) { key, value in
            guard value.count == 4 else { throw LedgerError.corruptRecord(table: "clients", detail: "count size") }
            try body(Array(key), Int(UInt32(littleEndian: value.loadUnaligned(as: UInt32.self))))
            return true
        }
    }

    /// Every key of the expiry index, in deadline order; the body returns false to stop.
    public func forEachDeadlineKey(_ body: (UnsafeRawBufferPointer) throws -> Bool) throws {
        try scan(lmdb.deadlines, first: nil) { key, _ in try body(key) }
    }

    /// The earliest expiry deadline, if any session is waiting to expire.
    public func earliestDeadline() throws -> Int64? {
        var earliest: Int64?
        try forEachDeadlineKey { key in
            earliest = try ProjectionFormat.decodeDeadlineKey(key).0
            return false
        }
        return earliest
    }

    func scan(
        _ dbi: MDB_dbi, first: UnsafeMutablePointer<MDB_val>?,
        _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        try scanTable(txn: txn, dbi: dbi, first: first, body)
    }
}

func scanTable(
    txn: OpaquePointer, dbi: MDB_dbi, first: UnsafeMutablePointer<MDB_val>?,
    _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool
) throws {
    var cursor: OpaquePointer?
    try check(mdb_cursor_open(txn, dbi, &cursor), "mdb_cursor_open")
    defer { mdb_cursor_close(cursor) }
    var key = MDB_val()
    var value = MDB_val()
    var op = MDB_FIRST
    if let first {
        key = first.pointee
        op = MDB_SET_RANGE
    }
    while true {
        let code = mdb_cursor_get(cursor, &key, &value, op)
        if code == MDB_NOTFOUND { return }
        try check(code, "mdb_cursor_get")
        guard try body(key.bytes, value.bytes) else { return }
        op = MDB_NEXT
    }
}

func readHead(txn: OpaquePointer, lmdb: LedgerEnvironment) throws(LedgerError) -> LedgerHead {
    guard let bytes = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.head) else { return .empty }
    let decoded = bytes.withUnsafeBytes { raw in Result { () throws(LedgerError) in try LedgerHead.decode(raw) } }
    return try decoded.get()
}

/// A `meta` value: one every commit changes from the unnamed database (`MetaKey.everyCommit`),
/// else, or when a ledger written before keeps it there, from `meta`.
func readMetaBytes(txn: OpaquePointer, lmdb: LedgerEnvironment, key: [UInt8]) throws(LedgerError) -> [UInt8]? {
    if let moved = MetaKey.everyCommit(key), let bytes = try readBytes(txn: txn, dbi: lmdb.main, key: moved) {
        return bytes
    }
    return try readBytes(txn: txn, dbi: lmdb.meta, key: key)
}

private func readBytes(txn: OpaquePointer, dbi: MDB_dbi, key: [UInt8]) throws(LedgerError) -> [UInt8]? {
    try withVal(key) { (k) throws(LedgerError) -> [UInt8]? in
        var value = MDB_val()
        let code = mdb_get(txn, dbi, &k, &value)
        if code == MDB_NOTFOUND { return nil }
        try check(code, "mdb_get meta")
        return Array(value.bytes)
    }
}

/// The raw bytes of one log record, copied.
func readRecordBytes(txn: OpaquePointer, lmdb: LedgerEnvironment, sequence: UInt64) throws(LedgerError) -> [UInt8]? {
    var key = sequence
    return try withUnsafeMutableBytes(of: &key) { (keyBytes) throws(LedgerError) -> [UInt8]? in
        var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
        var value = MDB_val()
        let code = mdb_get(txn, lmdb.log, &k, &value)
        if code == MDB_NOTFOUND { return nil }
        try check(code, "mdb_get log")
        return Array(value.bytes)
    }
}

/// Where the live log begins when older records were archived: the last archived
/// sequence, its time and its chain hash (`meta` key `archived`, laid out as `head`: 48 bytes).
public struct ArchiveBoundary: Sendable, Equatable {
    public var sequence: UInt64
    public var hash: ChainHash
    public var timestamp: Int64

    public init(sequence: UInt64, hash: ChainHash, timestamp: Int64) {
        self.sequence = sequence
        self.hash = hash
        self.timestamp = timestamp
    }

    static let encodedSize = 48

    var encoded: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.encodedSize)
        bytes.withUnsafeMutableBytes { LedgerHead(sequence: sequence, timestamp: timestamp, hash: hash).encode(into: $0) }
        return bytes
    }
}

func readArchiveBoundary(txn: OpaquePointer, lmdb: LedgerEnvironment) throws(LedgerError) -> ArchiveBoundary? {
    guard let bytes = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.archived) else { return nil }
    var decoded: Result<LedgerHead, LedgerError>!
    bytes.withUnsafeBytes { raw in
        do throws(LedgerError) { decoded = .success(try LedgerHead.decode(raw)) } catch { decoded = .failure(error) }
    }
    let head = try decoded.get()
    return ArchiveBoundary(sequence: head.sequence, hash: head.hash, timestamp: head.timestamp)
}

/// The projection's digest from its stored entries: SHA-256 of each stored value, summed.
func computeDigest(txn: OpaquePointer, lmdb: LedgerEnvironment) throws(LedgerError) -> ProjectionDigest {
    var digest = ProjectionDigest.empty
    do {
        try scanTable(txn: txn, dbi: lmdb.sessions, first: nil) { _, value in
            digest.add(ProjectionDigest.element(value))
            return true
        }
    } catch let error as LedgerError {
        throw error
    } catch {
        throw .corruptRecord(table: "sessions", detail: "\(error)")
    }
    return digest
}

func readSession(txn: OpaquePointer, lmdb: LedgerEnvironment, key: [UInt8]) throws(LedgerError) -> (SessionName, SessionEntry)? {
    try withVal(key) { (k) throws(LedgerError) -> (SessionName, SessionEntry)? in
        var value = MDB_val()
        let code = mdb_get(txn, lmdb.sessions, &k, &value)
        if code == MDB_NOTFOUND { return nil }
        try check(code, "mdb_get sessions")
        do {
            return try ProjectionFormat.decode(value.bytes)
        } catch {
            throw .corruptRecord(table: "sessions", detail: "\(error)")
        }
    }
}

func readLiveCount(txn: OpaquePointer, lmdb: LedgerEnvironment, key: [UInt8]) throws(LedgerError) -> Int {
    try withVal(key) { (k) throws(LedgerError) -> Int in
        var value = MDB_val()
        let code = mdb_get(txn, lmdb.clients, &k, &value)
        if code == MDB_NOTFOUND { return 0 }
        try check(code, "mdb_get clients")
        guard value.mv_size == 4 else { throw .corruptRecord(table: "clients", detail: "count size \(value.mv_size)") }
        return Int(UInt32(littleEndian: value.bytes.loadUnaligned(as: UInt32.self)))
    }
}

/// One write transaction of the writer: appends events and keeps the projection in step.
/// Lives on the writer thread only and never across an `await`.
/// A client key as a dictionary key: hashed in one call over its bytes, where `[UInt8]`
/// would feed the hasher byte by byte.
struct ClientKeyBytes: Hashable {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func hash(into hasher: inout Hasher) { bytes.withUnsafeBytes { hasher.combine(bytes: $0) } }
}

struct LedgerWriteTransaction {
    let txn: OpaquePointer
    let lmdb: LedgerEnvironment
    var head: LedgerHead
    /// The projection's running digest (`ProjectionDigest`), kept in step with every change.
    var digest: ProjectionDigest = .empty
    /// The newest checkpoint's sequence number (0: none yet).
    var lastCheckpoint: UInt64 = 0
    /// The last sequence moved to the archive, and its chain hash (0 and genesis: none).
    var archivedThrough: UInt64 = 0
    var archivedHash: ChainHash = .genesis
    var archivedTimestamp: Int64 = 0
    var archiveChanged = false
    var digestChanged = false
    var checkpointChanged = false
    /// The checkpoint whose entries the `prior` table holds (`MetaKey.prior`).
    var priorFor: UInt64 = 0
    var highestConnection: UInt64
    let startingConnection: UInt64
    /// One timestamp for every event of the transaction: they become durable together.
    let timestamp: Int64
    /// How long `mdb_txn_commit` (page writes and fsync) took; set after the commit.
    var commitNanoseconds: UInt64 = 0
    /// Live-session counts by client key as of this transaction, and which of them changed.
    var counts: [ClientKeyBytes: (count: Int, changed: Bool)] = [:]
    /// Every event appended, with its chain hash, in order; nil (the default) keeps none.
    var appended: [CommittedEvent]?
    /// How the numbers of live and of connected sessions changed in this transaction.
    var liveDelta = 0
    var connectedDelta = 0

    func session(_ key: [UInt8]) throws(LedgerError) -> SessionEntry? {
        try readSession(txn: txn, lmdb: lmdb, key: key)?.1
    }

    func namedSession(_ key: [UInt8]) throws(LedgerError) -> (SessionName, SessionEntry)? {
        try readSession(txn: txn, lmdb: lmdb, key: key)
    }

    /// Live-session counts are read at most once per transaction and written once at its
    /// end: a batch often holds several events of one client.
    mutating func liveCount(_ key: [UInt8]) throws(LedgerError) -> Int {
        if let cached = counts[ClientKeyBytes(key)] { return cached.count }
        let stored = try readLiveCount(txn: txn, lmdb: lmdb, key: key)
        counts[ClientKeyBytes(key)] = (stored, false)
        return stored
    }

    /// Appends one event and applies it to the projection.
    /// - Parameters:
    ///   - current: the session's entry before the event (the caller has read it already).
    /// - Returns: the stamped event and the session's entry after it.
    mutating func append(
        _ draft: LedgerEvent, current: SessionEntry?, sessionKey: [UInt8]
    ) throws(LedgerError) -> (LedgerEvent, SessionEntry?) {
        var event = EventRecordFormat.normalized(draft)
        event.sequence = head.sequence + 1
        event.timestamp = timestamp

        var seqKey = event.sequence
        let size = EventRecordFormat.encodedSize(of: event)
        let previous = head.hash
        let hash = try withUnsafeMutableBytes(of: &seqKey) { (keyBytes) throws(LedgerError) -> ChainHash in
            var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
            var v = MDB_val(mv_size: size, mv_data: nil)
            try check(mdb_put(txn, lmdb.log, &k, &v, UInt32(MDB_RESERVE | MDB_APPEND)), "mdb_put log")
            return EventRecordFormat.encode(
                event, previous: previous, into: UnsafeMutableRawBufferPointer(start: v.mv_data, count: size))
        }
        head = LedgerHead(sequence: event.sequence, timestamp: timestamp, hash: hash)
        if event.connection > highestConnection { highestConnection = event.connection }
        appended?.append(CommittedEvent(event: event, hash: hash))

        let next = SessionTransition.apply(event, to: current)
        if case .rejected = event.kind { return (event, next) }
        // Only a session the checkpoint held needs its entry kept: one it did not hold is told
        // by its own entry (a `firstSequence` after the checkpoint) or by its absence, so its
        // creation writes nothing here (one page fewer in the commit that creates it).
        if priorFor == lastCheckpoint && lastCheckpoint > 0, let current, current.firstSequence <= lastCheckpoint {
            try keepPrior(current, named: event.sessionName, sessionKey: sessionKey)
        }
        if let current { digest.subtract(ProjectionDigest.element(current, named: event.sessionName)) }
        if let next { digest.add(ProjectionDigest.element(next, named: event.sessionName)) }
        digestChanged = true
        liveDelta += (next == nil ? 0 : 1) - (current == nil ? 0 : 1)
        connectedDelta += (next?.state == .connected ? 1 : 0) - (current?.state == .connected ? 1 : 0)

        if let next {
            let size = ProjectionFormat.encodedSize(of: next, named: event.sessionName)
            try withVal(sessionKey) { (k) throws(LedgerError) in
                var v = MDB_val(mv_size: size, mv_data: nil)
                try check(mdb_put(txn, lmdb.sessions, &k, &v, UInt32(MDB_RESERVE)), "mdb_put sessions")
                ProjectionFormat.encode(
                    next, named: event.sessionName, into: UnsafeMutableRawBufferPointer(start: v.mv_data, count: size))
            }
        } else if current != nil {
            try delete(lmdb.sessions, sessionKey, "sessions")
        }

        let oldDeadline = current?.deadline
        let newDeadline = next?.deadline
        if oldDeadline != newDeadline {
            if let oldDeadline {
                try delete(lmdb.deadlines, ProjectionFormat.deadlineKey(oldDeadline, sessionKey: sessionKey), "deadlines")
            }
            if let newDeadline {
                try withVal(ProjectionFormat.deadlineKey(newDeadline, sessionKey: sessionKey)) { (k) throws(LedgerError) in
                    var v = MDB_val(mv_size: 0, mv_data: nil)
                    try check(mdb_put(txn, lmdb.deadlines, &k, &v, 0), "mdb_put deadlines")
                }
            }
        }

        switch (current, next) {
        case (nil, let started?):
            try adjustLiveCount(ProjectionFormat.clientKey(started.owner), by: 1)
        case (let ended?, nil):
            try adjustLiveCount(ProjectionFormat.clientKey(ended.owner), by: -1)
        default:
            break
        }
        return (event, next)
    }

    /// Keeps the session's entry as the newest checkpoint describes it, the first time the
    /// session changes after that checkpoint (later changes find it kept and write nothing).
    /// Entries of kind 0 (the session was absent) are no longer written, but still read.
    private func keepPrior(_ current: SessionEntry?, named name: SessionName, sessionKey: [UInt8]) throws(LedgerError) {
        let size = 1 + (current.map { ProjectionFormat.encodedSize(of: $0, named: name) } ?? 0)
        try withVal(sessionKey) { (k) throws(LedgerError) in
            var v = MDB_val(mv_size: size, mv_data: nil)
            let code = mdb_put(txn, lmdb.prior, &k, &v, UInt32(MDB_RESERVE | MDB_NOOVERWRITE))
            if code == MDB_KEYEXIST { return }
            try check(code, "mdb_put prior")
            let out = UnsafeMutableRawBufferPointer(start: v.mv_data, count: size)
            out[0] = current == nil ? 0 : 1
            if let current {
                ProjectionFormat.encode(current, named: name, into: UnsafeMutableRawBufferPointer(rebasing: out[1...]))
            }
        }
    }

    private mutating func adjustLiveCount(_ key: [UInt8], by delta: Int) throws(LedgerError) {
        let count = try liveCount(key) + delta
        guard count >= 0 else {
            throw .corruptRecord(table: "clients", detail: "live session count would go below zero")
        }
        counts[ClientKeyBytes(key)] = (count, true)
    }

    /// Writes a `meta` value; one every commit changes goes to the unnamed database
    /// (`MetaKey.everyCommit`), and its copy in `meta`, left by a ledger written before, is
    /// deleted the first time (only a ledger opened with such copies looks for them).
    private func putMeta(_ key: [UInt8], _ value: [UInt8]) throws(LedgerError) {
        let moved = MetaKey.everyCommit(key)
        try withVal(moved ?? key) { (k) throws(LedgerError) in
            try withVal(value) { (v) throws(LedgerError) in
                try check(mdb_put(txn, moved == nil ? lmdb.meta : lmdb.main, &k, &v, 0), "mdb_put meta")
            }
        }
        guard moved != nil, lmdb.everyCommitKeysInMeta else { return }
        try withVal(key) { (k) throws(LedgerError) in
            var found = MDB_val()
            guard mdb_get(txn, lmdb.meta, &k, &found) == 0 else { return }
            try check(mdb_del(txn, lmdb.meta, &k, nil), "mdb_del meta")
        }
    }

    private mutating func storeLiveCounts() throws(LedgerError) {
        defer { for key in counts.keys { counts[key]?.changed = false } }
        for (wrapped, (count, changed)) in counts where changed {
            let key = wrapped.bytes
            if count == 0 {
                try withVal(key) { (k) throws(LedgerError) in
                    let code = mdb_del(txn, lmdb.clients, &k, nil)
                    // Counted up and back down within this transaction: never stored.
                    if code == MDB_NOTFOUND { return }
                    try check(code, "mdb_del clients")
                }
                continue
            }
            var stored = UInt32(count).littleEndian
            try withVal(key) { (k) throws(LedgerError) in
                try withUnsafeMutableBytes(of: &stored) { (bytes) throws(LedgerError) in
                    var v = MDB_val(mv_size: 4, mv_data: bytes.baseAddress)
                    try check(mdb_put(txn, lmdb.clients, &k, &v, 0), "mdb_put clients")
                }
            }
        }
    }

    private func delete(_ dbi: MDB_dbi, _ key: [UInt8], _ table: String) throws(LedgerError) {
        try withVal(key) { (k) throws(LedgerError) in
            let code = mdb_del(txn, dbi, &k, nil)
            if code == MDB_NOTFOUND {
                throw .corruptRecord(table: table, detail: "projection key to delete is missing")
            }
            try check(code, "mdb_del \(table)")
        }
    }

    /// Reads the running digest and the newest checkpoint from `meta`. A ledger written before
    /// digests were kept gets its digest from one scan of its sessions, stored by this transaction.
    mutating func loadMeta() throws(LedgerError) {
        if let stored = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.digest) {
            guard stored.count == 32 else { throw .corruptRecord(table: "meta", detail: "digest is \(stored.count) bytes") }
            digest = stored.withUnsafeBytes { ProjectionDigest(bytes: $0) }
        } else {
            digest = try computeDigest(txn: txn, lmdb: lmdb)
            digestChanged = true
        }
        if let stored = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.checkpoint) {
            guard stored.count == 8 else { throw .corruptRecord(table: "meta", detail: "checkpoint is \(stored.count) bytes") }
            lastCheckpoint = stored.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        }
        if let stored = try readMetaBytes(txn: txn, lmdb: lmdb, key: MetaKey.prior), stored.count == 8 {
            priorFor = stored.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        }
        if let boundary = try readArchiveBoundary(txn: txn, lmdb: lmdb) {
            (archivedThrough, archivedHash, archivedTimestamp) = (boundary.sequence, boundary.hash, boundary.timestamp)
        }
    }

    /// Appends a checkpoint record describing the projection as this transaction has made it.
    /// Live counts must be stored first (`finish` does it again, at no cost).
    mutating func appendCheckpoint() throws(LedgerError) {
        try storeLiveCounts()
        func entries(_ dbi: MDB_dbi) throws(LedgerError) -> UInt64 {
            var stat = MDB_stat()
            try check(mdb_stat(txn, dbi, &stat), "mdb_stat")
            return UInt64(stat.ms_entries)
        }
        let checkpoint = Checkpoint(
            sequence: head.sequence + 1, timestamp: timestamp, highestConnection: highestConnection,
            liveSessions: try entries(lmdb.sessions), disconnectedSessions: try entries(lmdb.deadlines),
            clients: try entries(lmdb.clients), previousCheckpoint: lastCheckpoint, digest: digest)
        var seqKey = checkpoint.sequence
        let previous = head.hash
        let hash = try withUnsafeMutableBytes(of: &seqKey) { (keyBytes) throws(LedgerError) -> ChainHash in
            var k = MDB_val(mv_size: 8, mv_data: keyBytes.baseAddress)
            var v = MDB_val(mv_size: CheckpointRecordFormat.size, mv_data: nil)
            try check(mdb_put(txn, lmdb.log, &k, &v, UInt32(MDB_RESERVE | MDB_APPEND)), "mdb_put log (checkpoint)")
            return CheckpointRecordFormat.encode(
                checkpoint, previous: previous,
                into: UnsafeMutableRawBufferPointer(start: v.mv_data, count: CheckpointRecordFormat.size))
        }
        head = LedgerHead(sequence: checkpoint.sequence, timestamp: timestamp, hash: hash)
        lastCheckpoint = checkpoint.sequence
        checkpointChanged = true
        // The entries kept for the previous checkpoint go; this one's are the stored projection.
        try check(mdb_drop(txn, lmdb.prior, 0), "mdb_drop prior")
        priorFor = checkpoint.sequence
    }

    /// Writes the new head (and connection high-water mark) once per transaction.
    mutating func finish() throws(LedgerError) {
        try storeLiveCounts()
        if digestChanged {
            var bytes = [UInt8](repeating: 0, count: 32)
            digest.withBytes { raw in bytes.withUnsafeMutableBytes { $0.copyMemory(from: raw) } }
            try putMeta(MetaKey.digest, bytes)
        }
        if checkpointChanged {
            try putMeta(MetaKey.checkpoint, withUnsafeBytes(of: lastCheckpoint.littleEndian) { Array($0) })
            try putMeta(MetaKey.prior, withUnsafeBytes(of: priorFor.littleEndian) { Array($0) })
        }
        if archiveChanged {
            try putMeta(MetaKey.archived, ArchiveBoundary(sequence: archivedThrough, hash: archivedHash, timestamp: archivedTimestamp).encoded)
        }
        var headBytes = [UInt8](repeating: 0, count: LedgerHead.encodedSize)
        headBytes.withUnsafeMutableBytes { head.encode(into: $0) }
        try putMeta(MetaKey.head, headBytes)
        if highestConnection != startingConnection {
            try putMeta(MetaKey.connections, withUnsafeBytes(of: highestConnection.littleEndian) { Array($0) })
        }
    }
}
