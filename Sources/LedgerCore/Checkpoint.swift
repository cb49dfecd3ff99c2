import Crypto

/// A digest of the projection that can be kept up to date event by event: the sum, modulo
/// 2^256, of SHA-256 over the stored form of every live session's entry (its name, owner,
/// state, deadline: `ProjectionFormat.encode`). Adding an entry adds its hash, removing it
/// subtracts it, so the writer changes the digest with two hashes per event instead of
/// reading the whole projection, and any fold of the log reaches the same value from the
/// entries it holds. The clients and deadlines tables are functions of the entries
/// (`verify` checks them against them), so the digest covers them too.
public struct ProjectionDigest: Sendable, Hashable, CustomStringConvertible {
    /// Little-endian words, least significant first.
    public var words: (UInt64, UInt64, UInt64, UInt64)

    public static let empty = ProjectionDigest(words: (0, 0, 0, 0))

    public init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    public init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 32)
        words = (
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        )
    }

    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        var copy = (words.0.littleEndian, words.1.littleEndian, words.2.littleEndian, words.3.littleEndian)
        return try withUnsafeBytes(of: &copy) { try body($0) }
    }

    public var hex: String { withBytes { ChainHash(bytes: $0).hex } }
    public var description: String { hex }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2
            && lhs.words.3 == rhs.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
    }

    /// The hash an entry's stored bytes contribute.
    public static func element(_ storedEntry: UnsafeRawBufferPointer) -> ProjectionDigest {
        let digest = SHA256.hash(data: storedEntry)
        return digest.withUnsafeBytes { ProjectionDigest(bytes: $0) }
    }

    public static func element(_ entry: SessionEntry, named name: SessionName) -> ProjectionDigest {
        let size = ProjectionFormat.encodedSize(of: entry, named: name)
        return withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { buffer in
            ProjectionFormat.encode(entry, named: name, into: buffer)
            return element(UnsafeRawBufferPointer(buffer))
        }
    }

    public mutating func add(_ other: ProjectionDigest) {
        var carry: Bool
        (words.0, carry) = words.0.addingReportingOverflow(other.words.0)
        var c1: Bool
        var c2: Bool
        (words.1, c1) = words.1.addingReportingOverflow(other.words.1)
        (words.1, c2) = words.1.addingReportingOverflow(carry ? 1 : 0)
        carry = c1 || c2
        (words.2, c1) = words.2.addingReportingOverflow(other.words.2)
        (words.2, c2) = words.2.addingReportingOverflow(carry ? 1 : 0)
        carry = c1 || c2
        words.3 = words.3 &+ other.words.3 &+ (carry ? 1 : 0)
    }

    public mutating func subtract(_ other: ProjectionDigest) {
        // a - b = a + (~b + 1) modulo 2^256.
        var negated = ProjectionDigest(words: (~other.words.0, ~other.words.1, ~other.words.2, ~other.words.3))
        negated.add(ProjectionDigest(words: (1, 0, 0, 0)))
        add(negated)
    }

    /// The digest of a whole projection, computed from its entries.
    public static func of(_ projection: OwnershipProjection) -> ProjectionDigest {
        var digest = ProjectionDigest.empty
        for (name, entry) in projection.sessions { digest.add(element(entry, named: name)) }
        return digest
    }
}

/// A `checkpoint` record: a statement, chained like every record, of what the projection
/// was at its place in the log. The writer appends one every `checkpointEvery` events, in
/// the transaction that brings the projection to that state; recovery checks the log from
/// the newest one on, and `verify` checks each digest against its own fold.
public struct Checkpoint: Sendable, Equatable {
    /// The checkpoint record's own sequence number; it describes the projection after every
    /// record before it (a checkpoint changes no session).
    public var sequence: UInt64
    public var timestamp: Int64
    /// The highest connection number recorded before it.
    public var highestConnection: UInt64
    public var liveSessions: UInt64
    /// Live sessions that are disconnected (each has a deadline); the rest are connected.
    public var disconnectedSessions: UInt64
    /// Authentication names holding at least one live session (rows of `clients`).
    public var clients: UInt64
    /// The sequence of the checkpoint before this one, 0 for the first.
    public var previousCheckpoint: UInt64
    public var digest: ProjectionDigest

    public init(
        sequence: UInt64, timestamp: Int64, highestConnection: UInt64, liveSessions: UInt64,
        disconnectedSessions: UInt64, clients: UInt64, previousCheckpoint: UInt64, digest: ProjectionDigest
    ) {
        self.sequence = sequence
        self.timestamp = timestamp
        self.highestConnection = highestConnection
        self.liveSessions = liveSessions
        self.disconnectedSessions = disconnectedSessions
        self.clients = clients
        self.previousCheckpoint = previousCheckpoint
        self.digest = digest
    }
}

/// The layout of a checkpoint record (kind 5), 136 bytes; see RECORD-FORMAT.md. Its first
/// 40 bytes have the places of an event record's header, so that the sequence number and
/// timestamp are where every reader looks for them.
public enum CheckpointRecordFormat {
    public static let kindCode: UInt8 = 5
    public static let size = 136

    /// Whether stored record bytes are a checkpoint (version 1, kind 5).
    @inline(__always)
    public static func isCheckpoint(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 2 && bytes[0] == EventRecordFormat.version && bytes[1] == kindCode
    }

    public static func encode(_ checkpoint: Checkpoint, previous: ChainHash, into buffer: UnsafeMutableRawBufferPointer) -> ChainHash {
        precondition(buffer.count == size)
        var w = ByteWriter(buffer)
        w.write(EventRecordFormat.version)
        w.write(kindCode)
        for _ in 2..<16 { w.write(UInt8(0)) }
        w.write(checkpoint.sequence)
        w.write(checkpoint.timestamp)
        w.write(checkpoint.highestConnection)
        w.write(checkpoint.liveSessions)
        w.write(checkpoint.disconnectedSessions)
        w.write(checkpoint.clients)
        w.write(checkpoint.previousCheckpoint)
        checkpoint.digest.withBytes { w.write(bytes: $0) }
        let body = UnsafeRawBufferPointer(rebasing: buffer[0..<w.offset])
        let hash = ChainHash.link(previous: previous, body: body)
        hash.withBytes { w.write(bytes: $0) }
        return hash
    }

    public static func encode(_ checkpoint: Checkpoint, previous: ChainHash) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { _ = encode(checkpoint, previous: previous, into: $0) }
        return bytes
    }

    /// Decodes a checkpoint record, checking its structure (not its place in the chain).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> Checkpoint {
        guard bytes.count == size else { throw .lengthMismatch(expected: size, actual: bytes.count) }
        guard bytes[0] == EventRecordFormat.version else { throw .unknownVersion(bytes[0]) }
        guard bytes[1] == kindCode else { throw .unknownKind(bytes[1]) }
        for i in 2..<16 where bytes[i] != 0 { throw .reservedBitsSet }
        var r = ByteReader(UnsafeRawBufferPointer(rebasing: bytes[16..<72]))
        let sequence = try r.read(UInt64.self)
        let timestamp = try r.read(Int64.self)
        let highestConnection = try r.read(UInt64.self)
        let live = try r.read(UInt64.self)
        let disconnected = try r.read(UInt64.self)
        let clients = try r.read(UInt64.self)
        let previousCheckpoint = try r.read(UInt64.self)
        return Checkpoint(
            sequence: sequence, timestamp: timestamp, highestConnection: highestConnection, liveSessions: live,
            disconnectedSessions: disconnected, clients: clients, previousCheckpoint: previousCheckpoint,
            digest: ProjectionDigest(bytes: UnsafeRawBufferPointer(rebasing: bytes[72..<104])))
    }
}

/// What every reader of the log checks in a stored record before relying on it: an event
/// (`EventRecordFormat.header` and UTF-8 names) or a checkpoint (`CheckpointRecordFormat`),
/// numbered as it is stored. Not its place in the chain.
public enum LogRecordCheck {
    /// nil when the record is sound; otherwise what is wrong with it.
    public static func problem(_ bytes: UnsafeRawBufferPointer, sequence: UInt64) -> String? {
        let numbered: UInt64
        if CheckpointRecordFormat.isCheckpoint(bytes) {
            do {
                numbered = try CheckpointRecordFormat.decode(bytes).sequence
            } catch {
                return "\(error)"
            }
        } else {
            do {
                numbered = try EventRecordFormat.decode(bytes).event.sequence
            } catch {
                return "\(error)"
            }
        }
        guard numbered == sequence else { return "stored under \(sequence) but numbered \(numbered)" }
        return nil
    }
}
