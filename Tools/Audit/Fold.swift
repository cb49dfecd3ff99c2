import LMDBStorage
import Foundation
import SessionLedger

/// One session name as the fold knows it: its live state, or how it last ended.
struct FoldEntry {
    enum State: UInt8 {
        /// Never held, or ended (expired, or disconnected with expiry 0).
        case free
        case connected
        case disconnected
    }

    var name: ByteKey
    var state: State = .free
    /// The holder while live; the last holder once free (unset if never held).
    var owner: ByteKey = .empty
    var ownerClient: Int32 = -1
    var deadline: Int64 = 0
    var connection: UInt64 = 0
    var protocolCode: UInt8 = 0
    var cleanStart = false
    var expiryInterval: UInt32 = 0
    /// The event that put the name in its current state (for `free`, the one that ended
    /// it; 0 if the name was never held).
    var sinceSequence: UInt64 = 0
    var sinceTime: Int64 = 0
    var firstSequence: UInt64 = 0
    /// The remote address of the `connected` event of the holding connection.
    var remoteAddress: ByteKey = .empty

    var isLive: Bool { state != .free }

    /// Live at `time`: a disconnected session whose deadline has passed is not, even
    /// before its `expired` event is recorded (the session rules treat it so too).
    func isLive(at time: Int64) -> Bool {
        switch state {
        case .free: false
        case .connected: true
        case .disconnected: deadline > time
        }
    }

    /// The library's form, to compare with the stored projection and to describe it.
    var sessionEntry: SessionEntry {
        SessionEntry(
            owner: AuthenticationName(unchecked: owner.string),
            state: state == .connected ? .connected : .disconnected(deadline: deadline),
            connection: connection, protocolVersion: ProtocolVersion(rawValue: protocolCode) ?? .unknown,
            cleanStart: cleanStart, expiryInterval: expiryInterval, sinceSequence: sinceSequence,
            sinceTime: sinceTime, firstSequence: firstSequence)
    }
}

/// Authentication names by their comparison key (case-insensitive), numbered in order of
/// first appearance, with the live-session count of each.
struct ClientTable {
    private var byExactBytes = ByteTable()
    private var clientOfName: [Int32] = []
    private var byKeyBytes: [ByteKey: Int32] = [:]
    private var byKeyString: [String: Int32] = [:]
    /// The first spelling seen of each client, and its comparison key (`AuthenticationName.key`).
    private(set) var names: [ByteKey] = []
    private(set) var keys: [String] = []
    var liveCounts: [Int] = []
    /// Lower-cased copies of names that had capitals; freed with the fold.
    private var storage: [UnsafeMutableRawBufferPointer] = []

    var count: Int { names.count }

    mutating func release() {
        for buffer in storage { buffer.deallocate() }
        storage.removeAll()
    }

    /// The client number of a name, adding the client the first time.
    mutating func id(of name: ByteKey) -> Int32 {
        let (spelling, isNew) = byExactBytes.intern(name)
        if isNew { clientOfName.append(id(forKeyOf: name)) }
        return clientOfName[Int(spelling)]
    }

    /// The client number of a name if it has appeared, without adding it.
    func existingID(of name: AuthenticationName) -> Int32? {
        var text = name.value
        if let spelling = text.withUTF8({ byExactBytes.find(ByteKey(UnsafeRawPointer($0.baseAddress), $0.count)) }) {
            return clientOfName[Int(spelling)]
        }
        var key = name.key
        if key.utf8.allSatisfy({ $0 < 0x80 }) {
            return key.withUTF8 { byKeyBytes[ByteKey(UnsafeRawPointer($0.baseAddress), $0.count)] }
        }
        return byKeyString[key]
    }

    private mutating func id(forKeyOf name: ByteKey) -> Int32 {
        // ASCII names: the key is the bytes with A-Z lowered, as `AuthenticationName.key`
        // computes it; others go through the library's own key (Unicode case mapping).
        var key = name
        if name.isASCII {
            var hasUpper = false
            for byte in name.buffer where byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { hasUpper = true }
            if hasUpper {
                key = keep(name.buffer.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 + 32 : $0 })
            }
        } else {
            let text = AuthenticationName(unchecked: name.string).key
            guard text.utf8.allSatisfy({ $0 < 0x80 }) else {
                if let id = byKeyString[text] { return id }
                let id = Int32(names.count)
                byKeyString[text] = id
                append(name, key: text)
                return id
            }
            key = keep(Array(text.utf8))
        }
        if let id = byKeyBytes[key] { return id }
        let id = Int32(names.count)
        byKeyBytes[key] = id
        append(name, key: key.string)
        return id
    }

    private mutating func keep(_ bytes: [UInt8]) -> ByteKey {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        copy.copyBytes(from: bytes)
        storage.append(copy)
        return ByteKey(UnsafeRawPointer(copy.baseAddress), bytes.count)
    }

    private mutating func append(_ name: ByteKey, key: String) {
        names.append(name)
        keys.append(key)
        liveCounts.append(0)
    }
}

/// Gives each distinct byte string a dense id: open addressing over (hash, id) slots, so
/// that a probe touches one cache line, and a byte comparison only on a hash match.
/// Ids are never removed.
struct ByteTable {
    private struct Slot {
        var hash: UInt64
        var id: Int32  // -1: empty
    }

    private(set) var keys: [ByteKey] = []
    private var slots = [Slot](repeating: Slot(hash: 0, id: -1), count: 1024)
    private var shift: UInt64 = 64 - 10

    var count: Int { keys.count }

    @inline(__always)
    private func home(_ hash: UInt64) -> Int { Int(truncatingIfNeeded: (hash &* 0x9E37_79B9_7F4A_7C15) >> shift) }

    func find(_ key: ByteKey) -> Int32? {
        let mask = slots.count - 1
        var index = home(key.fingerprint)
        while true {
            let slot = slots[index]
            if slot.id < 0 { return nil }
            if slot.hash == key.fingerprint && keys[Int(slot.id)] == key { return slot.id }
            index = (index + 1) & mask
        }
    }

    /// The key's id, adding it if new.
    mutating func intern(_ key: ByteKey) -> (id: Int32, isNew: Bool) {
        let mask = slots.count - 1
        var index = home(key.fingerprint)
        while true {
            let slot = slots[index]
            if slot.id < 0 { break }
            if slot.hash == key.fingerprint && keys[Int(slot.id)] == key { return (slot.id, false) }
            index = (index + 1) & mask
        }
        let id = Int32(keys.count)
        keys.append(key)
        slots[index] = Slot(hash: key.fingerprint, id: id)
        if keys.count * 2 > slots.count { grow() }
        return (id, true)
    }

    private mutating func grow() {
        let old = slots
        slots = [Slot](repeating: Slot(hash: 0, id: -1), count: old.count * 2)
        shift -= 1
        let mask = slots.count - 1
        for slot in old where slot.id >= 0 {
            var index = home(slot.hash)
            while slots[index].id >= 0 { index = (index + 1) & mask }
            slots[index] = slot
        }
    }
}

/// The log folded into the state of every session name, with the same transitions as the
/// library's `SessionTransition.apply` and `OwnershipProjection.apply`, over record bytes in
/// LMDB's map instead of decoded events: no strings, no allocation per event. `verify`
/// compares the result with the stored projection, which the library keeps with its own
/// code, so the two cannot drift apart unnoticed.
///
/// Keys point into the map: a fold lives inside one `store.read` and dies with it.
struct AuditFold {
    private var index = ByteTable()
    private(set) var entries: [FoldEntry] = []
    var clients = ClientTable()
    private(set) var liveSessions = 0

    init() {}

    /// Frees the copies of lower-cased names; call when done.
    mutating func release() { clients.release() }

    func entry(named name: ByteKey) -> FoldEntry? {
        index.find(name).map { entries[Int($0)] }
    }

    func slot(named name: SessionName) -> Int? {
        var text = name.value
        return text.withUTF8 { index.find(ByteKey(UnsafeRawPointer($0.baseAddress), $0.count)) }.map(Int.init)
    }

    mutating func apply(_ r: RawRecord) {
        let kind = r.kindCode
        let name = r.sessionName
        // Names seen only in rejections are kept too: they are known to the ledger.
        // An empty name (a rejected invalid ClientID) is not a session name.
        if name.count == 0 && kind == RawRecord.rejected { return }
        let (id, isNew) = index.intern(name)
        let slot = Int(id)
        if isNew { entries.append(FoldEntry(name: name)) }
        switch kind {
        case RawRecord.connected:
            var e = entries[slot]
            let wasLive = e.isLive
            // As in the library, the count moves only when a session starts or ends, and
            // an end is counted against the holder of the latest `connected` event.
            let client = clients.id(of: r.authenticationName)
            if !wasLive {
                clients.liveCounts[Int(client)] += 1
                liveSessions += 1
            }
            if !wasLive || r.cleanStart { e.firstSequence = r.sequence }
            e.ownerClient = client
            e.owner = r.authenticationName
            e.state = .connected
            e.deadline = 0
            e.connection = r.connection
            e.protocolCode = r.protocolCode
            e.cleanStart = r.cleanStart
            e.expiryInterval = r.expiryInterval
            e.sinceSequence = r.sequence
            e.sinceTime = r.timestamp
            e.remoteAddress = r.remoteAddress
            entries[slot] = e
        case RawRecord.disconnected:
            guard entries[slot].isLive else { return }
            let expiry = r.expiryInterval
            guard expiry > 0 else { return end(slot, r) }
            var e = entries[slot]
            e.state = .disconnected
            e.deadline = r.timestamp &+ Int64(expiry) &* ISO8601Time.microsecondsPerSecond
            e.expiryInterval = expiry
            e.sinceSequence = r.sequence
            e.sinceTime = r.timestamp
            entries[slot] = e
        case RawRecord.expired:
            if entries[slot].isLive { end(slot, r) }
        default:
            break  // rejected: ownership is unchanged
        }
    }

    private mutating func end(_ slot: Int, _ r: RawRecord) {
        var e = entries[slot]
        clients.liveCounts[Int(e.ownerClient)] -= 1
        liveSessions -= 1
        e.state = .free
        e.deadline = 0
        e.sinceSequence = r.sequence
        e.sinceTime = r.timestamp
        entries[slot] = e
    }

    /// Live sessions at `time`, by session name.
    func live(at time: Int64) -> [(name: String, entry: FoldEntry)] {
        entries.filter { $0.isLive(at: time) }.map { ($0.name.string, $0) }.sorted { $0.name < $1.name }
    }

    /// The first way the stored projection differs from this fold of the whole log, in the
    /// order and words of the library's `verify`.
    func compare(with snapshot: LedgerSnapshot, head: LedgerHead) throws -> VerifyProblem? {
        let stored = try snapshot.head()
        guard stored == head else {
            return .headMismatch(
                detail: "stored head is \(stored.sequence)/\(stored.hash), log ends at \(head.sequence)/\(head.hash)")
        }

        var seen = [Bool](repeating: false, count: entries.count)
        var storedLive = 0
        var mismatch: VerifyProblem?
        do {
            try snapshot.forEachSession { name, stored in
                guard mismatch == nil else { return }
                storedLive += 1
                let slot = self.slot(named: name)
                guard let slot, entries[slot].isLive else {
                    mismatch = .projectionMismatch(detail: "session \(name) is stored but free in the log")
                    return
                }
                seen[slot] = true
                let replayed = entries[slot]
                if !Self.matches(replayed, stored) {
                    mismatch = .projectionMismatch(
                        detail: "session \(name) is stored as \(stored), the log says \(replayed.sessionEntry)")
                }
            }
        } catch let error as LedgerError {
            return .projectionMismatch(detail: "\(error)")
        }
        if let mismatch { return mismatch }
        if storedLive != liveSessions, let missing = entries.indices.first(where: { entries[$0].isLive && !seen[$0] }) {
            return .projectionMismatch(
                detail: "session \(entries[missing].name.string) is live in the log but missing from the projection")
        }

        var expectedCounts: [[UInt8]: (String, Int)] = [:]
        for client in 0..<clients.count where clients.liveCounts[client] != 0 {
            let key = clients.keys[client]
            expectedCounts[ProjectionFormat.key(for: key)] = (key, clients.liveCounts[client])
        }
        var countProblem: VerifyProblem?
        try snapshot.forEachClientCount { key, count in
            guard countProblem == nil else { return }
            let replayed = expectedCounts.removeValue(forKey: key)?.1
            if replayed != count {
                countProblem = .projectionMismatch(
                    detail: "client \(String(decoding: key, as: UTF8.self)) has \(count) live sessions stored, the log says \(replayed ?? 0)")
            }
        }
        if let countProblem { return countProblem }
        if let (key, count) = expectedCounts.values.first {
            return .projectionMismatch(detail: "client \(key) has \(count) live sessions in the log but none stored")
        }

        var expectedDeadlines = Set<[UInt8]>()
        for entry in entries where entry.state == .disconnected {
            let name = SessionName(unchecked: entry.name.string)
            expectedDeadlines.insert(ProjectionFormat.deadlineKey(entry.deadline, sessionKey: ProjectionFormat.sessionKey(name)))
        }
        var deadlineProblem: VerifyProblem?
        try snapshot.forEachDeadlineKey { key in
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
        if let storedDigest = try snapshot.storedDigest() {
            let replayed = digest()
            guard storedDigest == replayed else {
                return .projectionMismatch(detail: "the stored projection digest is \(storedDigest), the log's \(replayed)")
            }
        }
        return nil
    }

    /// The projection's digest (`ProjectionDigest`) of the live sessions as folded so far.
    func digest() -> ProjectionDigest {
        var digest = ProjectionDigest.empty
        for entry in entries where entry.isLive {
            digest.add(ProjectionDigest.element(entry.sessionEntry, named: SessionName(unchecked: entry.name.string)))
        }
        return digest
    }

    /// How a checkpoint differs from this fold of the records before it; nil when it does not.
    func mismatch(with checkpoint: Checkpoint) -> String? {
        var live: UInt64 = 0
        var disconnected: UInt64 = 0
        for entry in entries where entry.isLive {
            live += 1
            if entry.state == .disconnected { disconnected += 1 }
        }
        let clients = UInt64(self.clients.liveCounts.filter { $0 > 0 }.count)
        guard checkpoint.liveSessions == live, checkpoint.disconnectedSessions == disconnected,
              checkpoint.clients == clients
        else {
            return "it counts \(checkpoint.liveSessions) live sessions (\(checkpoint.disconnectedSessions) disconnected) of \(checkpoint.clients) clients, the log \(live) (\(disconnected)) of \(clients)"
        }
        let replayed = digest()
        guard checkpoint.digest == replayed else {
            return "its projection digest is \(checkpoint.digest), the log's \(replayed)"
        }
        return nil
    }

    /// `SessionEntry ==` without building strings: the owner compared byte for byte.
    private static func matches(_ replayed: FoldEntry, _ stored: SessionEntry) -> Bool {
        let state: Bool = switch stored.state {
        case .connected: replayed.state == .connected
        case .disconnected(let deadline): replayed.state == .disconnected && replayed.deadline == deadline
        }
        return state && replayed.owner.equals(stored.owner.value) && replayed.connection == stored.connection
            && replayed.protocolCode == stored.protocolVersion.rawValue && replayed.cleanStart == stored.cleanStart
            && replayed.expiryInterval == stored.expiryInterval && replayed.sinceSequence == stored.sinceSequence
            && replayed.sinceTime == stored.sinceTime && replayed.firstSequence == stored.firstSequence
    }
}
