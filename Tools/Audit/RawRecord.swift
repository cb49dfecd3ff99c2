import SessionLedger

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A record of format version 1 or 2 (2: with an epoch) read in place, in LMDB's memory map, without copying or
/// building strings (see `Sources/LedgerCore/RECORD-FORMAT.md`). Valid only inside the
/// read transaction that produced the bytes.
///
/// `init?(_:)` checks only what makes every field readable (version and lengths); the
/// full format check is the library's `EventRecordFormat.decode`, which `LogScan` runs on
/// every record before any answer is given.
struct RawRecord {
    let bytes: UnsafeRawBufferPointer

    static let headerSize = EventRecordFormat.headerSize
    static let hashSize = EventRecordFormat.hashSize

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= Self.headerSize + Self.hashSize,
            bytes[0] == EventRecordFormat.version || bytes[0] == EventRecordFormat.epochVersion
        else { return nil }
        self.bytes = bytes
        namesStart = bytes[0] == EventRecordFormat.epochVersion ? EventRecordFormat.epochHeaderSize : Self.headerSize
        // A checkpoint: fixed size, no names (its counts and digest: `checkpoint`).
        if bytes[1] == CheckpointRecordFormat.kindCode {
            guard bytes.count == CheckpointRecordFormat.size else { return nil }
            return
        }
        guard namesStart + authenticationLength + sessionLength + remoteLength + Self.hashSize == bytes.count
        else { return nil }
    }

    /// Where the names start: after the epoch in a version 2 record.
    let namesStart: Int
    /// The cluster's epoch (the etcd revision of the decision); 0 in a version 1 record.
    var epoch: UInt64 {
        namesStart == Self.headerSize ? 0 : UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 40, as: UInt64.self))
    }

    var kindCode: UInt8 { bytes[1] }
    var isCheckpoint: Bool { bytes[1] == CheckpointRecordFormat.kindCode }
    /// The checkpoint this record is (nil for an event, or one that does not decode).
    var checkpoint: Checkpoint? { isCheckpoint ? try? CheckpointRecordFormat.decode(bytes) : nil }
    var reasonCode: UInt8 { bytes[2] }
    var protocolCode: UInt8 { bytes[3] }
    var cleanStart: Bool { bytes[4] & 1 == 1 }
    var remoteLength: Int { isCheckpoint ? 0 : Int(bytes[5]) }
    var authenticationLength: Int {
        isCheckpoint ? 0 : Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self)))
    }
    var sessionLength: Int {
        isCheckpoint ? 0 : Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt16.self)))
    }
    var expiryInterval: UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)) }
    var sequence: UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self)) }
    var timestamp: Int64 { Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 24, as: Int64.self)) }
    var connection: UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 32, as: UInt64.self)) }

    var authenticationName: ByteKey {
        ByteKey(bytes.baseAddress! + namesStart, authenticationLength)
    }

    var sessionName: ByteKey {
        ByteKey(bytes.baseAddress! + namesStart + authenticationLength, sessionLength)
    }

    var remoteAddress: ByteKey {
        ByteKey(bytes.baseAddress! + namesStart + authenticationLength + sessionLength, remoteLength)
    }

    var hash: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[(bytes.count - Self.hashSize)...])
    }

    var chainHash: ChainHash { ChainHash(bytes: hash) }

    static let connected: UInt8 = 1
    static let disconnected: UInt8 = 2
    static let expired: UInt8 = 3
    static let rejected: UInt8 = 4
}

/// Bytes somewhere stable (LMDB's map during a read transaction, or storage the owner
/// keeps alive), hashed once and compared byte for byte: names keyed without making
/// `String`s, which would cost more than the rest of a replay.
struct ByteKey: Hashable {
    let base: UnsafeRawPointer?
    let count: Int
    let fingerprint: UInt64

    init(_ base: UnsafeRawPointer?, _ count: Int) {
        self.base = base
        self.count = count
        self.fingerprint = count == 0 ? 0 : ByteKey.hash(base!, count)
    }

    static var empty: ByteKey { ByteKey(nil, 0) }

    var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    var string: String { String(decoding: buffer, as: UTF8.self) }

    var isASCII: Bool {
        for byte in buffer where byte >= 0x80 { return false }
        return true
    }

    static func == (lhs: ByteKey, rhs: ByteKey) -> Bool {
        guard lhs.count == rhs.count, lhs.fingerprint == rhs.fingerprint else { return false }
        return lhs.count == 0 || memcmp(lhs.base!, rhs.base!, lhs.count) == 0
    }

    func hash(into hasher: inout Hasher) { hasher.combine(fingerprint) }

    func equals(_ text: String) -> Bool {
        var text = text
        return text.withUTF8 { utf8 in
            utf8.count == count && (count == 0 || memcmp(base!, utf8.baseAddress!, count) == 0)
        }
    }

    /// A multiply-xorshift hash over 8-byte words; names are short and mostly ASCII.
    @inline(__always)
    static func hash(_ p: UnsafeRawPointer, _ n: Int) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(truncatingIfNeeded: n)
        var i = 0
        while i + 8 <= n {
            h = (h ^ UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self))) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 32
            i += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < n {
            tail |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << shift
            shift += 8
            i += 1
        }
        h = (h ^ tail) &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 29
        return h
    }
}

/// Names of the reasons, by kind code and reason code, from the library's own enums so
/// that a reason appended there shows here. camelCase, as in the Swift source.
enum ReasonNames {
    static let table: [[String?]] = {
        var table = [[String?]](repeating: [String?](repeating: nil, count: 256), count: 5)
        for r in DisconnectReason.allCases { table[2][Int(r.rawValue)] = "\(r)" }
        for r in ExpiryReason.allCases { table[3][Int(r.rawValue)] = "\(r)" }
        for r in RejectionReason.allCases { table[4][Int(r.rawValue)] = "\(r)" }
        return table
    }()

    static let kinds: [String] = ["?", "connected", "disconnected", "expired", "rejected", "checkpoint"]

    static func kind(_ code: UInt8) -> String { code < 6 ? kinds[Int(code)] : "kind\(code)" }

    static func reason(kind: UInt8, _ code: UInt8) -> String? {
        guard kind < 5, kind != RawRecord.connected else { return nil }
        return table[Int(kind)][Int(code)] ?? "reason\(code)"
    }
}
