import CompressNIO
import Foundation
import LedgerCore
import NIOCore

/// One archive segment: an immutable file under `DATA/archive/` holding the records of one
/// range of sequence numbers, moved out of the live log. Named
/// `segment-FIRST-LAST.zlib` with both numbers in 20 digits, so that names sort in log order
/// and the name of a missing segment follows from its neighbours.
///
///     offset  size  field (integers little-endian)
///     0       8     magic "CUSTSEG1"
///     8       4     format version (1)
///     12      4     header size (168)
///     16      8     first sequence number
///     24      8     last sequence number
///     32      8     first record's timestamp (µs)
///     40      8     last record's timestamp (µs)
///     48      8     body size, uncompressed
///     56      8     body size, compressed
///     64      8     reserved, 0
///     72      32    the chain hash before the first record (the previous record's hash)
///     104     32    the last record's chain hash
///     136     32    SHA-256 of bytes 0..<136
///     168     …     body: zlib (RFC 1950) of the records, each as UInt32 length ‖ record bytes
///
/// The records are stored exactly as the live log held them (RECORD-FORMAT.md), so every
/// one keeps its own chain hash: a reader checks the chain through the segment, from the
/// hash before it to the last hash, and from one segment to the next.
public struct SegmentHeader: Sendable, Equatable {
    public var first: UInt64
    public var last: UInt64
    public var firstTimestamp: Int64
    public var lastTimestamp: Int64
    public var bodyBytes: Int
    public var compressedBytes: Int
    public var previousHash: ChainHash
    public var lastHash: ChainHash

    public static let magic: [UInt8] = Array("CUSTSEG1".utf8)
    public static let version: UInt32 = 1
    public static let size = 168

    public var name: String { ArchiveSegment.fileName(first: first, last: last) }

    func encode() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { buffer in
            buffer.copyBytes(from: Self.magic)
            buffer.storeBytes(of: Self.version.littleEndian, toByteOffset: 8, as: UInt32.self)
            buffer.storeBytes(of: UInt32(Self.size).littleEndian, toByteOffset: 12, as: UInt32.self)
            buffer.storeBytes(of: first.littleEndian, toByteOffset: 16, as: UInt64.self)
            buffer.storeBytes(of: last.littleEndian, toByteOffset: 24, as: UInt64.self)
            buffer.storeBytes(of: firstTimestamp.littleEndian, toByteOffset: 32, as: Int64.self)
            buffer.storeBytes(of: lastTimestamp.littleEndian, toByteOffset: 40, as: Int64.self)
            buffer.storeBytes(of: UInt64(bodyBytes).littleEndian, toByteOffset: 48, as: UInt64.self)
            buffer.storeBytes(of: UInt64(compressedBytes).littleEndian, toByteOffset: 56, as: UInt64.self)
            previousHash.withBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[72..<104]).copyMemory(from: $0) }
            lastHash.withBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[104..<136]).copyMemory(from: $0) }
            let checksum = ChainHash.link(previous: .genesis, body: UnsafeRawBufferPointer(rebasing: buffer[0..<136]))
            checksum.withBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[136..<168]).copyMemory(from: $0) }
        }
        return bytes
    }

    static func decode(_ bytes: UnsafeRawBufferPointer) -> Result<SegmentHeader, SegmentError.Kind> {
        guard bytes.count >= size, Array(bytes[0..<8]) == magic else { return .failure(.notASegment) }
        guard UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) == version,
              UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 12, as: UInt32.self)) == UInt32(size)
        else { return .failure(.unsupportedVersion) }
        let checksum = ChainHash.link(previous: .genesis, body: UnsafeRawBufferPointer(rebasing: bytes[0..<136]))
        guard checksum == ChainHash(bytes: UnsafeRawBufferPointer(rebasing: bytes[136..<168])) else {
            return .failure(.altered("its header does not match its checksum"))
        }
        func u64(_ offset: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
        return .success(SegmentHeader(
            first: u64(16), last: u64(24), firstTimestamp: Int64(bitPattern: u64(32)),
            lastTimestamp: Int64(bitPattern: u64(40)), bodyBytes: Int(u64(48)), compressedBytes: Int(u64(56)),
            previousHash: ChainHash(bytes: UnsafeRawBufferPointer(rebasing: bytes[72..<104])),
            lastHash: ChainHash(bytes: UnsafeRawBufferPointer(rebasing: bytes[104..<136]))))
    }
}

/// What is wrong with a segment, naming it.
public struct SegmentError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Error, Sendable, Equatable {
        case missing
        case notASegment
        case unsupportedVersion
        case altered(String)
        case unreadable(String)
    }

    public var segment: String
    public var kind: Kind

    public var detail: String {
        switch kind {
        case .missing: "missing"
        case .notASegment: "not a Custody archive segment"
        case .unsupportedVersion: "a segment format this program does not know"
        case .altered(let detail): "altered: \(detail)"
        case .unreadable(let detail): "unreadable: \(detail)"
        }
    }

    public var description: String { "archive segment \(segment): \(detail)" }
}

/// A segment read into memory and checked: header, decompression, framing, each record's
/// format and numbering, and the chain from `previousHash` to `lastHash`. Its records stay
/// at stable addresses for the life of the value.
public final class LoadedSegment: @unchecked Sendable {
    public let header: SegmentHeader
    public let path: String
    private let storage: UnsafeMutableRawBufferPointer
    /// Start offset and length of each record, in order.
    public let ranges: [(offset: Int, count: Int)]

    init(header: SegmentHeader, path: String, storage: UnsafeMutableRawBufferPointer, ranges: [(offset: Int, count: Int)]) {
        self.header = header
        self.path = path
        self.storage = storage
        self.ranges = ranges
    }

    deinit { storage.deallocate() }

    public var name: String { header.name }

    /// The records, with their sequence numbers, in order; `body` returns false to stop.
    public func forEachRecord(from sequence: UInt64 = 0, _ body: (UInt64, UnsafeRawBufferPointer) throws -> Bool) rethrows -> Bool {
        let start = sequence > header.first ? Int(sequence - header.first) : 0
        guard start < ranges.count else { return true }
        for index in start..<ranges.count {
            let range = ranges[index]
            let bytes = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(storage)[range.offset..<range.offset + range.count])
            if try !body(header.first + UInt64(index), bytes) { return false }
        }
        return true
    }
}

public enum ArchiveSegment {
    public static let fileExtension = "zlib"

    public static func fileName(first: UInt64, last: UInt64) -> String {
        func padded(_ n: UInt64) -> String {
            let digits = String(n)
            return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
        }
        return "segment-\(padded(first))-\(padded(last)).\(fileExtension)"
    }

    /// The range a segment file name stands for; nil for other names.
    public static func range(ofName name: String) -> ClosedRange<UInt64>? {
        guard name.hasPrefix("segment-"), name.hasSuffix("." + fileExtension) else { return nil }
        let core = name.dropFirst("segment-".count).dropLast(fileExtension.count + 1)
        let parts = core.split(separator: "-")
        guard parts.count == 2, let first = UInt64(parts[0]), let last = UInt64(parts[1]), first >= 1, first <= last
        else { return nil }
        return first...last
    }

    /// The segments in `directory`, in log order (by name); temporary files are not listed.
    public static func list(_ directory: String) -> [(name: String, range: ClosedRange<UInt64>)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name in range(ofName: name).map { (name, $0) } }.sorted { $0.range.lowerBound < $1.range.lowerBound }
    }

    /// Writes the records (`first` on, dense, stored bytes) as a segment: a temporary file,
    /// fsynced, renamed into place, and the directory fsynced, so that once this returns the
    /// segment survives a crash or a power loss whole, and before it returns nothing under
    /// its name exists. Answers its header.
    public static func write(
        records: [[UInt8]], first: UInt64, previousHash: ChainHash, to directory: String
    ) throws -> SegmentHeader {
        precondition(!records.isEmpty)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var bodyBytes = 0
        for record in records { bodyBytes += 4 + record.count }
        var body = ByteBufferAllocator().buffer(capacity: bodyBytes)
        for record in records {
            body.writeInteger(UInt32(record.count), endianness: .little)
            body.writeBytes(record)
        }
        let compressed = try body.compress(with: .zlib())
        let firstTimestamp = records.first!.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: Int64.self)) }
        let lastTimestamp = records.last!.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: 24, as: Int64.self)) }
        let lastHash = records.last!.withUnsafeBytes { EventRecordFormat.storedHash($0) }
        let header = SegmentHeader(
            first: first, last: first + UInt64(records.count) - 1, firstTimestamp: firstTimestamp,
            lastTimestamp: lastTimestamp, bodyBytes: bodyBytes, compressedBytes: compressed.readableBytes,
            previousHash: previousHash, lastHash: lastHash)
        let path = directory + "/" + header.name
        let temporary = directory + "/." + header.name + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o440)
        guard fd >= 0 else { throw posixError("open \(temporary)") }
        do {
            try writeAll(fd, header.encode())
            try compressed.withUnsafeReadableBytes { try writeAll(fd, $0) }
            guard fsync(fd) == 0 else { throw posixError("fsync \(temporary)") }
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw posixError("rename \(temporary)")
        }
        try syncDirectory(directory)
        return header
    }

    /// Removes temporary files a crash left behind (a segment not yet renamed into place).
    public static func removeTemporaryFiles(in directory: String) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where name.hasPrefix(".segment-") && name.hasSuffix(".tmp") {
            unlink(directory + "/" + name)
        }
    }

    /// Reads only the header of a segment file.
    public static func header(at path: String) throws(SegmentError) -> SegmentHeader {
        let name = (path as NSString).lastPathComponent
        guard let handle = FileHandle(forReadingAtPath: path) else { throw SegmentError(segment: name, kind: .missing) }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: SegmentHeader.size)) ?? Data()
        switch data.withUnsafeBytes({ SegmentHeader.decode($0) }) {
        case .success(let header): return header
        case .failure(let kind): throw SegmentError(segment: name, kind: kind)
        }
    }

    /// Reads, decompresses and checks a whole segment (see `LoadedSegment`). The name must
    /// match the header's range.
    public static func load(_ path: String) throws(SegmentError) -> LoadedSegment {
        let name = (path as NSString).lastPathComponent
        guard let data = FileManager.default.contents(atPath: path) else { throw SegmentError(segment: name, kind: .missing) }
        let header: SegmentHeader
        switch data.withUnsafeBytes({ SegmentHeader.decode($0) }) {
        case .success(let decoded): header = decoded
        case .failure(let kind): throw SegmentError(segment: name, kind: kind)
        }
        guard header.name == name else {
            throw SegmentError(segment: name, kind: .altered("its header says records \(header.first)–\(header.last)"))
        }
        guard data.count == SegmentHeader.size + header.compressedBytes, header.bodyBytes < 1 << 40 else {
            throw SegmentError(segment: name, kind: .altered("it is \(data.count) bytes, its header says \(SegmentHeader.size + header.compressedBytes)"))
        }
        var compressed = ByteBuffer(bytes: data[(data.startIndex + SegmentHeader.size)...])
        var body = ByteBufferAllocator().buffer(capacity: header.bodyBytes)
        do {
            try compressed.decompress(to: &body, with: .zlib())
        } catch {
            throw SegmentError(segment: name, kind: .altered("its body does not decompress (\(error))"))
        }
        guard body.readableBytes == header.bodyBytes else {
            throw SegmentError(segment: name, kind: .altered("its body is \(body.readableBytes) bytes, its header says \(header.bodyBytes)"))
        }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(header.bodyBytes, 1), alignment: 8)
        body.withUnsafeReadableBytes { storage.copyMemory(from: $0) }
        var ranges: [(offset: Int, count: Int)] = []
        ranges.reserveCapacity(Int(header.last - header.first + 1))
        var offset = 0
        var previous = header.previousHash
        var expected = header.first
        var problem: SegmentError.Kind?
        let raw = UnsafeRawBufferPointer(storage)
        while offset < header.bodyBytes {
            guard offset + 4 <= header.bodyBytes else {
                problem = .altered("its body ends inside a record's length")
                break
            }
            let count = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
            guard offset + 4 + count <= header.bodyBytes else {
                problem = .altered("record \(expected) runs past the end of the body")
                break
            }
            let bytes = UnsafeRawBufferPointer(rebasing: raw[offset + 4..<offset + 4 + count])
            if let failure = LogRecordCheck.problem(bytes, sequence: expected) {
                problem = .altered("record \(expected) is unreadable: \(failure)")
                break
            }
            let stored = EventRecordFormat.storedHash(bytes)
            guard EventRecordFormat.chainHash(of: bytes, previous: previous) == stored else {
                problem = .altered("record \(expected) does not match its hash chain")
                break
            }
            previous = stored
            ranges.append((offset + 4, count))
            offset += 4 + count
            expected += 1
        }
        if problem == nil {
            if expected != header.last + 1 {
                problem = .altered("it holds records \(header.first)–\(expected - 1), its header says \(header.first)–\(header.last)")
            } else if previous != header.lastHash {
                problem = .altered("its last record's hash is not the one its header names")
            }
        }
        if let problem {
            storage.deallocate()
            throw SegmentError(segment: name, kind: problem)
        }
        return LoadedSegment(header: header, path: path, storage: storage, ranges: ranges)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writeAll(fd, $0) }
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
        var written = 0
        while written < bytes.count {
            let n = Foundation.write(fd, bytes.baseAddress! + written, bytes.count - written)
            if n < 0 {
                if errno == EINTR { continue }
                throw posixError("write")
            }
            written += n
        }
    }

    /// fsync of a directory: what makes a rename in it durable.
    public static func syncDirectory(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw posixError("open \(directory)") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw posixError("fsync \(directory)") }
    }

    static func posixError(_ operation: String) -> LedgerError {
        let code = errno
        return .storage(operation: operation, code: code, message: String(cString: strerror(code)))
    }
}
