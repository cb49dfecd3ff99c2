import Crypto

/// Binary forms of the projection's keys and values (format version 1). The projection is
/// derived data: `verify` rebuilds it from the log, so only the log format is sacred, but
/// these are versioned too so that a reader can refuse what it does not understand.
///
/// Table keys (`sessionKey`, `clientKey`): the UTF-8 text when it is at most 480 bytes,
/// else 0xFF (never in UTF-8) followed by the SHA-256 of the text, because LMDB keys stop
/// at 511 bytes and a 128-character name may take 512.
///
/// Session entry (value of the `sessions` table, key = `sessionKey(name)`):
///
///     offset  size  field
///     0       1     version (1)
///     1       1     state: 1 connected, 2 disconnected
///     2       1     protocol version
///     3       1     flags: bit 0 clean start of the connect that began the current state
///     4       4     expiry interval, seconds
///     8       8     connection number
///     16      8     since sequence
///     24      8     since time (µs)
///     32      8     deadline (µs; 0 while connected)
///     40      8     first sequence
///     48      2     owner length (O)
///     50      2     session name length (S)
///     52      O     owner authentication name, UTF-8, original case
///     52+O    S     session name, UTF-8
///
/// Deadline key (`deadlines` table): 8-byte big-endian deadline, then the session key,
/// so that a cursor walks deadlines in time order; value: empty. Client key (`clients`
/// table): `clientKey` of the lower-cased authentication name; value: live session count,
/// UInt32 little-endian.
public enum ProjectionFormat {
    public static let entryVersion: UInt8 = 1
    static let entryHeaderSize = 52
    static let maximumPlainKeyBytes = 480

    /// The table key for a text: itself, or 0xFF + SHA-256 when too long for LMDB.
    public static func key(for text: String) -> [UInt8] {
        let utf8 = text.utf8
        if utf8.count <= maximumPlainKeyBytes { return Array(utf8) }
        var key: [UInt8] = [0xFF]
        var hasher = SHA256()
        hasher.update(data: Array(utf8))
        key.append(contentsOf: hasher.finalize())
        return key
    }

    public static func sessionKey(_ name: SessionName) -> [UInt8] { key(for: name.value) }
    public static func clientKey(_ name: AuthenticationName) -> [UInt8] { key(for: name.key) }

    public static func encodedSize(of entry: SessionEntry, named name: SessionName) -> Int {
        entryHeaderSize + entry.owner.value.utf8.count + name.value.utf8.count
    }

    public static func encode(_ entry: SessionEntry, named name: SessionName, into buffer: UnsafeMutableRawBufferPointer) {
        var w = ByteWriter(buffer)
        w.write(entryVersion)
        switch entry.state {
        case .connected: w.write(UInt8(1))
        case .disconnected: w.write(UInt8(2))
        }
        w.write(entry.protocolVersion.rawValue)
        w.write(UInt8(entry.cleanStart ? 1 : 0))
        w.write(entry.expiryInterval)
        w.write(entry.connection)
        w.write(entry.sinceSequence)
        w.write(entry.sinceTime)
        w.write(entry.deadline ?? 0)
        w.write(entry.firstSequence)
        w.write(UInt16(entry.owner.value.utf8.count))
        w.write(UInt16(name.value.utf8.count))
        w.write(utf8: entry.owner.value)
        w.write(utf8: name.value)
        precondition(w.offset == buffer.count)
    }

    public static func encode(_ entry: SessionEntry, named name: SessionName) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: encodedSize(of: entry, named: name))
        bytes.withUnsafeMutableBytes { encode(entry, named: name, into: $0) }
        return bytes
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> (SessionName, SessionEntry) {
        var r = ByteReader(bytes)
        let version = try r.read(UInt8.self)
        guard version == entryVersion else { throw .unknownVersion(version) }
        let stateCode = try r.read(UInt8.self)
        let protoCode = try r.read(UInt8.self)
        guard let proto = ProtocolVersion(rawValue: protoCode) else { throw .unknownProtocolVersion(protoCode) }
        let flags = try r.read(UInt8.self)
        guard flags & ~1 == 0 else { throw .reservedBitsSet }
        let expiry = try r.read(UInt32.self)
        let connection = try r.read(UInt64.self)
        let sinceSequence = try r.read(UInt64.self)
        let sinceTime = try r.read(Int64.self)
        let deadline = try r.read(Int64.self)
        let firstSequence = try r.read(UInt64.self)
        let ownerLength = Int(try r.read(UInt16.self))
        let nameLength = Int(try r.read(UInt16.self))
        let owner = try r.readString(ownerLength)
        let name = try r.readString(nameLength)
        guard r.remaining == 0 else {
            throw .lengthMismatch(expected: entryHeaderSize + ownerLength + nameLength, actual: bytes.count)
        }
        let state: SessionEntry.State
        switch stateCode {
        case 1: state = .connected
        case 2: state = .disconnected(deadline: deadline)
        default: throw .unknownKind(stateCode)
        }
        let entry = SessionEntry(
            owner: AuthenticationName(unchecked: owner), state: state, connection: connection,
            protocolVersion: proto, cleanStart: flags & 1 == 1, expiryInterval: expiry,
            sinceSequence: sinceSequence, sinceTime: sinceTime, firstSequence: firstSequence)
        return (SessionName(unchecked: name), entry)
    }

    public static func deadlineKey(_ deadline: Int64, sessionKey: [UInt8]) -> [UInt8] {
        var key = [UInt8]()
        key.reserveCapacity(8 + sessionKey.count)
        withUnsafeBytes(of: UInt64(bitPattern: deadline).bigEndian) { key.append(contentsOf: $0) }
        key.append(contentsOf: sessionKey)
        return key
    }

    /// Splits a deadline key into its deadline and the session key it points to.
    public static func decodeDeadlineKey(_ bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> (Int64, [UInt8]) {
        guard bytes.count > 8 else { throw .truncated }
        let deadline = Int64(bitPattern: UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self)))
        return (deadline, Array(bytes[8...]))
    }
}
