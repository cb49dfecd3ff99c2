/// Folds raw log records into an `OwnershipProjection` quickly: names are interned by
/// their bytes, so an event costs no String, no allocation and no String hashing once
/// its names have been seen. The state change itself is `SessionTransition.apply`, the
/// same as everywhere else.
public struct LogFold {
    private var sessionNames = ByteInterner()
    private var names: [SessionName] = []
    private var entries: [SessionEntry?] = []
    /// Client id of each entry's owner, kept with the entry.
    private var entryClients: [Int] = []

    private var authenticationNames = ByteInterner()
    private var owners: [AuthenticationName] = []
    /// Authentication-name id to client id: names that differ only by case share one client.
    private var clientOfOwner: [Int] = []
    private var clientIDs: [String: Int] = [:]
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
        if !remote.isEmpty { _ = try decodeUTF8(remote) }
        lastSequence = header.sequence
        lastTimestamp = header.timestamp
        if case .rejected = header.kind { return }

        // The remote address plays no part in ownership; the fold leaves it out.
        let event = LedgerEvent(
            sequence: header.sequence, timestamp: header.timestamp, kind: header.kind,
            authenticationName: owners[owner], sessionName: names[session], connection: header.connection,
            protocolVersion: header.protocolVersion, cleanStart: header.cleanStart,
            expiryInterval: header.expiryInterval)
        let before = entries[session]
        let after = SessionTransition.apply(event, to: before)
        switch (before, after) {
        case (nil, .some):
            liveCounts[clientOfOwner[owner]] += 1
        case (.some, nil):
            // Counted against the entry's owner, as the store does, whoever the event names.
            liveCounts[entryClients[session]] -= 1
        default:
            break
        }
        if case .connected = header.kind { entryClients[session] = clientOfOwner[owner] }
        entries[session] = after
    }

    /// The projection as of the last applied record.
    public var projection: OwnershipProjection {
        var sessions: [SessionName: SessionEntry] = [:]
        for (index, entry) in entries.enumerated() {
            if let entry { sessions[names[index]] = entry }
        }
        var counts: [String: Int] = [:]
        for (client, count) in liveCounts.enumerated() where count != 0 {
            counts[clientKeys[client]] = count
        }
        return OwnershipProjection(
            sessions: sessions, liveSessionCounts: counts, lastSequence: lastSequence, lastTimestamp: lastTimestamp)
    }

    private mutating func intern(session bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> Int {
        let (id, isNew, hash) = sessionNames.intern(bytes)
        if isNew {
            names.append(SessionName(unchecked: try decodeUTF8(bytes), fingerprint: hash))
            entries.append(nil)
            entryClients.append(0)
        }
        return id
    }

    private mutating func intern(owner bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> Int {
        let (id, isNew, _) = authenticationNames.intern(bytes)
        if isNew {
            let name = AuthenticationName(unchecked: try decodeUTF8(bytes))
            owners.append(name)
            clientOfOwner.append(clientID(of: name))
        }
        return id
    }

    private mutating func clientID(of name: AuthenticationName) -> Int {
        if let id = clientIDs[name.key] { return id }
        let id = clientKeys.count
        clientIDs[name.key] = id
        clientKeys.append(name.key)
        liveCounts.append(0)
        return id
    }
}

/// FNV-1a, 64-bit: the session-name fingerprint and the interner's hash.
@inlinable
func fnv1a<S: Sequence<UInt8>>(_ bytes: S) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes {
        hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
    }
    return hash
}

/// Gives each distinct byte string a dense id. Open addressing over an arena; entries
/// are never removed (a replay interns every name it meets, once).
struct ByteInterner {
    private struct Slot {
        var hash: UInt64
        /// -1 when empty.
        var id: Int32
    }

    private var arena: [UInt8] = []
    private var spans: [(start: Int, count: Int)] = []
    /// Capacity is a power of two, at most half full; the hash is kept in the slot so that
    /// a probe past other names touches no other memory.
    private var slots = [Slot](repeating: Slot(hash: 0, id: -1), count: 1024)
    private var shift = 64 - 10

    /// Fibonacci hashing: FNV-1a's low bits depend only on the bytes' low bits, so the
    /// slot comes from the high bits of a multiplied hash instead.
    @inline(__always)
    private func slot(for hash: UInt64) -> Int {
        Int(truncatingIfNeeded: (hash &* 0x9E37_79B9_7F4A_7C15) >> UInt64(shift))
    }

    mutating func intern(_ bytes: UnsafeRawBufferPointer) -> (id: Int, isNew: Bool, hash: UInt64) {
        let hash = fnv1a(bytes)
        let mask = slots.count - 1
        var index = slot(for: hash)
        let found: Int? = slots.withUnsafeBufferPointer { table in
            arena.withUnsafeBytes { stored in
                while table[index].id >= 0 {
                    let candidate = table[index]
                    if candidate.hash == hash {
                        let span = spans[Int(candidate.id)]
                        if span.count == bytes.count
                            && (bytes.isEmpty || memcmpEqual(stored.baseAddress! + span.start, bytes.baseAddress!, bytes.count))
                        {
                            return Int(candidate.id)
                        }
                    }
                    index = (index + 1) & mask
                }
                return nil
            }
        }
        if let found { return (found, false, hash) }
        let id = spans.count
        spans.append((arena.count, bytes.count))
        arena.append(contentsOf: bytes)
        slots[index] = Slot(hash: hash, id: Int32(id))
        if spans.count * 2 > slots.count { grow() }
        return (id, true, hash)
    }

    private mutating func grow() {
        let old = slots
        slots = [Slot](repeating: Slot(hash: 0, id: -1), count: old.count * 2)
        shift -= 1
        let mask = slots.count - 1
        for entry in old where entry.id >= 0 {
            var index = slot(for: entry.hash)
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
