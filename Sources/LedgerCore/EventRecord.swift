import Crypto

/// A SHA-256 value of the hash chain. Stored as four words so comparing is cheap.
public struct ChainHash: Hashable, Sendable, CustomStringConvertible {
    public var words: (UInt64, UInt64, UInt64, UInt64)

    /// The hash that stands before the first record.
    public static let genesis = ChainHash(words: (0, 0, 0, 0))

    public init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    public init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 32)
        words = (
            bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
            bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
            bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self),
            bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
        )
    }

    public init?(hex: String) {
        let chars = Array(hex.utf8)
        guard chars.count == 64 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 {
            guard let hi = Self.nibble(chars[2 * i]), let lo = Self.nibble(chars[2 * i + 1]) else { return nil }
            bytes[i] = hi << 4 | lo
        }
        self = bytes.withUnsafeBytes { ChainHash(bytes: $0) }
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = words
        return try withUnsafeBytes(of: &copy) { try body($0) }
    }

    public var hex: String {
        withBytes { bytes in
            let digits = Array("0123456789abcdef".utf8)
            var out = [UInt8]()
            out.reserveCapacity(64)
            for b in bytes {
                out.append(digits[Int(b >> 4)])
                out.append(digits[Int(b & 0xF)])
            }
            return String(decoding: out, as: UTF8.self)
        }
    }

    public var description: String { hex }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2
            && lhs.words.3 == rhs.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
    }

    /// The chain link: SHA-256 over the previous hash followed by the record body.
    public static func link(previous: ChainHash, body: UnsafeRawBufferPointer) -> ChainHash {
        var hasher = SHA256()
        previous.withBytes { hasher.update(bufferPointer: $0) }
        hasher.update(bufferPointer: body)
        let digest = hasher.finalize()
        return digest.withUnsafeBytes { ChainHash(bytes: $0) }
    }
}

/// An event as stored: the event plus the chain hash that seals it.
public struct LedgerRecord: Sendable, Equatable {
    public var event: LedgerEvent
    public var hash: ChainHash
}

/// Format versions 1 and 2 of a ledger record (2 adds the cluster's epoch after the
/// connection number; events without an epoch are still written as version 1). The authoritative description is
/// `Sources/LedgerCore/RECORD-FORMAT.md`; golden files in the tests pin it.
///
///     offset  size  field
///     0       1     format version (1)
///     1       1     kind: 1 connected, 2 disconnected, 3 expired, 4 rejected
///     2       1     reason (0 for connected; else the kind's reason raw value)
///     3       1     protocol version (0 unknown, 3, 4, 5)
///     4       1     flags: bit 0 clean start; other bits must be 0
///     5       1     remote address length in bytes (R)
///     6       2     authentication name length in bytes (A)
///     8       2     session name length in bytes (S)
///     10      2     reserved, 0
///     12      4     session expiry interval, seconds
///     16      8     sequence number
///     24      8     timestamp, microseconds since the Unix epoch (signed)
///     32      8     connection number
///     (40     8     epoch: the etcd revision of the decision; version 2 only, names follow at 48)
///     40      A     authentication name, UTF-8
///     40+A    S     session name, UTF-8
///     40+A+S  R     remote address, UTF-8
///     end-32  32    SHA-256(previous record's hash ‖ bytes 0 ..< end-32)
///
/// All integers are little-endian.
public enum EventRecordFormat {
    public static let version: UInt8 = 1
    /// The version of a record that carries an epoch (a cluster's event).
    public static let epochVersion: UInt8 = 2
    public static let headerSize = 40
    public static let epochHeaderSize = 48
    public static let hashSize = 32
    public static let maximumRemoteAddressBytes = 255

    static func kindCode(_ kind: LedgerEventKind) -> (UInt8, UInt8) {
        switch kind {
        case .connected: (1, 0)
        case .disconnected(let r): (2, r.rawValue)
        case .expired(let r): (3, r.rawValue)
        case .rejected(let r): (4, r.rawValue)
        }
    }

    static func kind(code: UInt8, reason: UInt8) throws(RecordFormatError) -> LedgerEventKind {
        switch code {
        case 1:
            guard reason == 0 else { throw .unknownReason(kind: code, reason: reason) }
            return .connected
        case 2:
            guard let r = DisconnectReason(rawValue: reason) else { throw .unknownReason(kind: code, reason: reason) }
            return .disconnected(r)
        case 3:
            guard let r = ExpiryReason(rawValue: reason) else { throw .unknownReason(kind: code, reason: reason) }
            return .expired(r)
        case 4:
            guard let r = RejectionReason(rawValue: reason) else { throw .unknownReason(kind: code, reason: reason) }
            return .rejected(r)
        default:
            throw .unknownKind(code)
        }
    }

    /// The remote address as it will be stored: cut at a character boundary to fit one byte of length.
    static func storableRemoteAddress(_ address: String) -> String {
        if address.utf8.count <= maximumRemoteAddressBytes { return address }
        var cut = ""
        for scalar in address.unicodeScalars {
            if cut.utf8.count + String(scalar).utf8.count > maximumRemoteAddressBytes { break }
            cut.unicodeScalars.append(scalar)
        }
        return cut
    }

    /// Names longer than the format can hold only occur in rejected events of hostile
    /// CONNECTs; they are cut so that the rejection can still be recorded.
    static func storableName(_ name: String) -> String {
        if name.utf8.count <= Int(UInt16.max) { return name }
        var cut = ""
        for scalar in name.unicodeScalars {
            if cut.utf8.count + String(scalar).utf8.count > Int(UInt16.max) { break }
            cut.unicodeScalars.append(scalar)
        }
        return cut
    }

    /// Prepares an event for encoding so that `encodedSize` and `encode` agree.
    public static func normalized(_ event: LedgerEvent) -> LedgerEvent {
        var event = event
        event.remoteAddress = storableRemoteAddress(event.remoteAddress)
        if event.authenticationName.value.utf8.count > Int(UInt16.max) {
            event.authenticationName = AuthenticationName(unchecked: storableName(event.authenticationName.value))
        }
        if event.sessionName.value.utf8.count > Int(UInt16.max) {
            event.sessionName = SessionName(unchecked: storableName(event.sessionName.value))
        }
        return event
    }

    /// The size of the encoded record of a normalized event.
    public static func encodedSize(of event: LedgerEvent) -> Int {
        headerSize(of: event) + event.authenticationName.value.utf8.count + event.sessionName.value.utf8.count
            + event.remoteAddress.utf8.count + hashSize
    }

    /// Where the names start: version 2 (an epoch) has 8 more bytes of header.
    static func headerSize(of event: LedgerEvent) -> Int {
        event.epoch == 0 ? headerSize : epochHeaderSize
    }

    /// Writes a normalized event into exactly `encodedSize(of:)` bytes and returns its chain hash.
    @discardableResult
    public static func encode(
        _ event: LedgerEvent, previous: ChainHash, into buffer: UnsafeMutableRawBufferPointer
    ) -> ChainHash {
        let auth = event.authenticationName.value.utf8.count
        let session = event.sessionName.value.utf8.count
        let remote = event.remoteAddress.utf8.count
        precondition(buffer.count == headerSize(of: event) + auth + session + remote + hashSize)
        let (kind, reason) = kindCode(event.kind)
        var w = ByteWriter(buffer)
        w.write(event.epoch == 0 ? version : epochVersion)
        w.write(kind)
        w.write(reason)
        w.write(event.protocolVersion.rawValue)
        w.write(UInt8(event.cleanStart ? 1 : 0))
        w.write(UInt8(remote))
        w.write(UInt16(auth))
        w.write(UInt16(session))
        w.write(UInt16(0))
        w.write(event.expiryInterval)
        w.write(event.sequence)
        w.write(event.timestamp)
        w.write(event.connection)
        if event.epoch != 0 { w.write(event.epoch) }
        w.write(utf8: event.authenticationName.value)
        w.write(utf8: event.sessionName.value)
        w.write(utf8: event.remoteAddress)
        let body = UnsafeRawBufferPointer(rebasing: buffer[0..<w.offset])
        let hash = ChainHash.link(previous: previous, body: body)
        hash.withBytes { w.write(bytes: $0) }
        return hash
    }

    /// Encodes into a new array; for tests, golden files and tools. The ledger writes in place.
    public static func encode(_ event: LedgerEvent, previous: ChainHash) -> [UInt8] {
        let event = normalized(event)
        var bytes = [UInt8](repeating: 0, count: encodedSize(of: event))
        bytes.withUnsafeMutableBytes { _ = encode(event, previous: previous, into: $0) }
        return bytes
    }

    /// The fixed part of a record and where its variable fields lie, checked for
    /// structure (version, codes, reserved bits, length). Names are not decoded yet.
    public struct Header: Sendable {
        public var kind: LedgerEventKind
        public var protocolVersion: ProtocolVersion
        public var cleanStart: Bool
        public var expiryInterval: UInt32
        public var sequence: UInt64
        public var timestamp: Int64
        public var connection: ConnectionNumber
        /// 0 in a version 1 record.
        public var epoch: UInt64
        public var authenticationNameRange: Range<Int>
        public var sessionNameRange: Range<Int>
        public var remoteAddressRange: Range<Int>
    }

    public static func header(_ bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> Header {
        var r = ByteReader(bytes)
        let version = try r.read(UInt8.self)
        guard version == self.version || version == epochVersion else { throw .unknownVersion(version) }
        let start = version == epochVersion ? epochHeaderSize : headerSize
        let kindCode = try r.read(UInt8.self)
        let reasonCode = try r.read(UInt8.self)
        let kind = try kind(code: kindCode, reason: reasonCode)
        let protoCode = try r.read(UInt8.self)
        guard let proto = ProtocolVersion(rawValue: protoCode) else { throw .unknownProtocolVersion(protoCode) }
        let flags = try r.read(UInt8.self)
        guard flags & ~1 == 0 else { throw .reservedBitsSet }
        let remote = Int(try r.read(UInt8.self))
        let auth = Int(try r.read(UInt16.self))
        let session = Int(try r.read(UInt16.self))
        guard try r.read(UInt16.self) == 0 else { throw .reservedBitsSet }
        let expected = start + auth + session + remote + hashSize
        guard bytes.count == expected else { throw .lengthMismatch(expected: expected, actual: bytes.count) }
        let expiry = try r.read(UInt32.self)
        let sequence = try r.read(UInt64.self)
        let timestamp = try r.read(Int64.self)
        let connection = try r.read(UInt64.self)
        let epoch = version == epochVersion ? try r.read(UInt64.self) : 0
        return Header(
            kind: kind, protocolVersion: proto, cleanStart: flags & 1 == 1,
            expiryInterval: expiry, sequence: sequence, timestamp: timestamp, connection: connection, epoch: epoch,
            authenticationNameRange: start..<start + auth,
            sessionNameRange: start + auth..<start + auth + session,
            remoteAddressRange: start + auth + session..<expected - hashSize)
    }

    /// The chain hash stored at the end of a record (whose length `header` has checked).
    public static func storedHash(_ bytes: UnsafeRawBufferPointer) -> ChainHash {
        ChainHash(bytes: UnsafeRawBufferPointer(rebasing: bytes[(bytes.count - hashSize)...]))
    }

    /// Decodes a record, checking its structure but not its place in the chain.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> LedgerRecord {
        let h = try header(bytes)
        func text(_ range: Range<Int>) throws(RecordFormatError) -> String {
            try decodeUTF8(UnsafeRawBufferPointer(rebasing: bytes[range]))
        }
        let event = LedgerEvent(
            sequence: h.sequence, timestamp: h.timestamp, kind: h.kind,
            authenticationName: AuthenticationName(unchecked: try text(h.authenticationNameRange)),
            sessionName: SessionName(unchecked: try text(h.sessionNameRange)),
            connection: h.connection, protocolVersion: h.protocolVersion, cleanStart: h.cleanStart,
            expiryInterval: h.expiryInterval, remoteAddress: try text(h.remoteAddressRange), epoch: h.epoch)
        return LedgerRecord(event: event, hash: storedHash(bytes))
    }

    /// Recomputes the chain hash of stored record bytes from the previous hash.
    public static func chainHash(of bytes: UnsafeRawBufferPointer, previous: ChainHash) -> ChainHash {
        ChainHash.link(previous: previous, body: UnsafeRawBufferPointer(rebasing: bytes[0..<bytes.count - hashSize]))
    }

    /// Reads only the sequence number, for scans that do not need the whole event.
    public static func sequence(of bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard bytes.count >= headerSize else { return nil }
        return UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
    }
}
