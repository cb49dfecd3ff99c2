/// Folds raw log records into an `OwnershipProjection` quickly: names are interned by
/// their bytes and each session's state is a plain value in one array, so an event costs
/// no String, no allocation, no reference counting and one random memory access once its
/// names have been seen. The rules of the state change are `SessionTransition`'s; the
/// tests hold this fold to the projection's `apply` after every event of random logs.
public struct LogFold {
    /// A session's state with its owner as an interned id. `owner < 0`: no live session.
    private struct Slot {
        var owner: Int32 = -1
        /// The client (case-insensitive authentication name) the entry counts against.
        var client: Int32 = 0
        var connected = false
        var protocolVersion = ProtocolVersion.mqtt5
        var cleanStart = false
        var expiryInterval: UInt32 = 0
        var deadline: Int64 = 0
        var connection: ConnectionNumber = 0
        var sinceSequence: UInt64 = 0
        var sinceTime: Int64 = 0
        var firstSequence: UInt64 = 0
    }

    private var sessionNames = ByteInterner()
    private var slots: [Slot] = []

    private var authenticationNames = ByteInterner()
    /// Authentication-name id to client id: names that differ only by case share one client.
    private var clientOfOwner: [Int32] = []
    private var clientIDs: [String: Int32] = [:]
    private var clientKeys: [String] = []
    private var liveCounts: [Int] = []

    public private(set) var lastSequence: UInt64 = 0
    public private(set) var lastTimestamp: Int64 = 0

    public init() {}

    /// Applies one stored record; returns its header for the caller's own checks.
    @discardableResult
    public mutating func apply(record bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> EventRecordFormat.Header {
        let header = try EventRecordFormat.header(bytes)
        try apply(record: bytes, header: header)
        return header
    }

    /// Applies one stored record whose header the caller has parsed already.
    public mutating func apply(record bytes: UnsafeRawBufferPointer, header: EventRecordFormat.Header) throws(RecordFormatError) {
        let session = try intern(session: UnsafeRawBufferPointer(rebasing: bytes[header.sessionNameRange]))
        let owner = try intern(owner: UnsafeRawBufferPointer(rebasing: bytes[header.authenticationNameRange]))
        let remote = UnsafeRawBufferPointer(rebasing: bytes[header.remoteAddressRange])
        if !remote.isEmpty, !isASCII(remote) { _ = try decodeUTF8(remote) }
        lastSequence = header.sequence
        lastTimestamp = header.timestamp
        slots.withUnsafeMutableBufferPointer { slots in
            // SessionTransition.apply, on the compact slot.
            switch header.kind {
            case .rejected:
                return
            case .expired:
                // Counted against the entry's owner, as the store does, whoever the event names.
                if slots[session].owner >= 0 { liveCounts[Int(slots[session].client)] -= 1 }
                slots[session].owner = -1
            case .connected:
                var slot = slots[session]
                let continues = slot.owner >= 0 && !header.cleanStart
                if slot.owner < 0 { liveCounts[Int(clientOfOwner[owner])] += 1 }
                slot.firstSequence = continues ? slot.firstSequence : header.sequence
                slot.owner = Int32(owner)
                slot.client = clientOfOwner[owner]
                slot.connected = true
                slot.connection = header.connection
                slot.protocolVersion = header.protocolVersion
                slot.cleanStart = header.cleanStart
                slot.expiryInterval = header.expiryInterval
                slot.sinceSequence = header.sequence
                slot.sinceTime = header.timestamp
                slots[session] = slot
            case .disconnected:
                guard slots[session].owner >= 0 else { return }
                // A session with expiry interval 0 ends with its connection (MQTT 5 §3.1.2.11.2).
                guard header.expiryInterval > 0 else {
                    liveCounts[Int(slots[session].client)] -= 1
                    slots[session].owner = -1
                    return
                }
                slots[session].connected = false
                slots[session].deadline =
                    header.timestamp + Int64(header.expiryInterval) * SessionTransition.microsecondsPerSecond
                slots[session].expiryInterval = header.expiryInterval
                slots[session].sinceSequence = header.sequence
                slots[session].sinceTime = header.timestamp
            }
        }
    }

    /// The projection as of the last applied record.
    public var projection: OwnershipProjection {
        var owners: [AuthenticationName] = []
        owners.reserveCapacity(authenticationNames.count)
        for id in 0..<authenticationNames.count {
            owners.append(AuthenticationName(unchecked: authenticationNames.string(id)))
        }
        var sessions: [SessionName: SessionEntry] = [:]
        for (index, slot) in slots.enumerated() where slot.owner >= 0 {
            let name = SessionName(unchecked: sessionNames.string(index))
            sessions[name] = SessionEntry(
                owner: owners[Int(slot.owner)], state: slot.connected ? .connected : .disconnected(deadline: slot.deadline),
                connection: slot.connection, protocolVersion: slot.protocolVersion, cleanStart: slot.cleanStart,
                expiryInterval: slot.expiryInterval, sinceSequence: slot.sinceSequence, sinceTime: slot.sinceTime,
                firstSequence: slot.firstSequence)
        }
        var counts: [String: Int] = [:]
        for (client, count) in liveCounts.enumerated() where count != 0 {
            counts[clientKeys[client]] = count
        }
        return OwnershipProjection(
            sessions: sessions, liveSessionCounts: counts, lastSequence: lastSequence, lastTimestamp: lastTimestamp)
    }

    private mutating func intern(session bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> Int {
        let (id, isNew) = sessionNames.intern(bytes)
        if isNew {
            if !isASCII(bytes) { _ = try decodeUTF8(bytes) }
            slots.append(Slot())
        }
        return id
    }

    private mutating func intern(owner bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> Int {
        let (id, isNew) = authenticationNames.intern(bytes)
        if isNew {
            let name = AuthenticationName(unchecked: try decodeUTF8(bytes))
            clientOfOwner.append(clientID(of: name))
        }
        return id
    }

    private mutating func clientID(of name: AuthenticationName) -> Int32 {
        if let id = clientIDs[name.key] { return id }
        let id = Int32(clientKeys.count)
        clientIDs[name.key] = id
        clientKeys.append(name.key)
        liveCounts.append(0)
        return id
    }
}

@inline(__always)
private func isASCII(_ bytes: UnsafeRawBufferPointer) -> Bool {
    var i = 0
    let count = bytes.count
    while i + 8 <= count {
        if bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 { return false }
        i += 8
    }
    while i < count {
        if bytes[i] >= 0x80 { return false }
        i += 1
    }
    return true
}

/// The 64-bit hash of a name's UTF-8 bytes (the session-name fingerprint and the
/// interner's hash): multiply-xorshift over 8-byte words, as names are short. Kept in
/// memory only, never stored.
@inline(__always)
func nameHash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    let count = bytes.count
    var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: count)
    var i = 0
    while i + 8 <= count {
        h = (h ^ bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 32
        i += 8
    }
    var tail: UInt64 = 0
    var shift: UInt64 = 0
    while i < count {
        tail |= UInt64(bytes[i]) << shift
        shift += 8
        i += 1
    }
    h = (h ^ tail) &* 0xC4CE_B9FE_1A85_EC53
    h ^= h >> 29
    return h
}

/// Gives each distinct byte string a dense id. Open addressing over an arena; entries
/// are never removed (a replay interns every name it meets, once).
struct ByteInterner {
    /// The tag is the hash with the length in its low 16 bits, so that a probe decides
    /// from the slot alone whether the bytes need comparing; `start` is where they are.
    private struct Slot {
        var tag: UInt64
        /// -1 when empty.
        var id: Int32
        var start: UInt32
    }

    private var arena: [UInt8] = []
    private var starts: [UInt32] = []
    /// Capacity is a power of two, at most half full.
    private var slots = [Slot](repeating: Slot(tag: 0, id: -1, start: 0), count: 1024)
    private var shift = 64 - 10

    var count: Int { starts.count }

    /// Fibonacci hashing: the slot comes from the high bits of a multiplied hash.
    @inline(__always)
    private func slot(for tag: UInt64) -> Int {
        Int(truncatingIfNeeded: (tag &* 0x9E37_79B9_7F4A_7C15) >> UInt64(shift))
    }

    /// Names longer than 65,535 bytes cannot occur: the record format's lengths are 16-bit.
    mutating func intern(_ bytes: UnsafeRawBufferPointer) -> (id: Int, isNew: Bool) {
        let tag = (nameHash(bytes) & ~0xFFFF) | UInt64(UInt16(truncatingIfNeeded: bytes.count))
        let mask = slots.count - 1
        var index = slot(for: tag)
        let found: Int? = slots.withUnsafeBufferPointer { table in
            arena.withUnsafeBytes { stored in
                while table[index].id >= 0 {
                    let candidate = table[index]
                    if candidate.tag == tag
                        && (bytes.isEmpty
                            || memcmpEqual(stored.baseAddress! + Int(candidate.start), bytes.baseAddress!, bytes.count))
                    {
                        return Int(candidate.id)
                    }
                    index = (index + 1) & mask
                }
                return nil
            }
        }
        if let found { return (found, false) }
        let id = starts.count
        precondition(arena.count + bytes.count <= Int(UInt32.max), "more than 4 GiB of distinct names")
        slots[index] = Slot(tag: tag, id: Int32(id), start: UInt32(arena.count))
        starts.append(UInt32(arena.count))
        arena.append(contentsOf: bytes)
        if starts.count * 2 > slots.count { grow() }
        return (id, true)
    }

    /// The bytes of `id` as a String (they were checked to be UTF-8 when interned).
    func string(_ id: Int) -> String {
        let start = Int(starts[id])
        let end = id + 1 < starts.count ? Int(starts[id + 1]) : arena.count
        return String(decoding: arena[start..<end], as: UTF8.self)
    }

    private mutating func grow() {
        let old = slots
        slots = [Slot](repeating: Slot(tag: 0, id: -1, start: 0), count: old.count * 2)
        shift -= 1
        let mask = slots.count - 1
        for entry in old where entry.id >= 0 {
            var index = slot(for: entry.tag)
            while slots[index].id >= 0 { index = (index + 1) & mask }
            slots[index] = entry
        }
    }
}

@inline(__always)
private func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    var i = 0
    while i + 8 <= count {
        if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) {
            return false
        }
        i += 8
    }
    while i < count {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}
