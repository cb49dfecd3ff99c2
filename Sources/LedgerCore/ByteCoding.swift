/// Little-endian writes into a buffer whose size was computed beforehand: the ledger
/// writes records straight into LMDB's reserved space, so nothing grows or copies.
@usableFromInline
struct ByteWriter {
    @usableFromInline let base: UnsafeMutableRawBufferPointer
    @usableFromInline var offset = 0

    @inlinable init(_ base: UnsafeMutableRawBufferPointer) { self.base = base }

    @inlinable mutating func write<T: FixedWidthInteger>(_ value: T) {
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    @inlinable mutating func write(bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        UnsafeMutableRawBufferPointer(rebasing: base[offset..<offset + bytes.count]).copyMemory(from: bytes)
        offset += bytes.count
    }

    @inlinable mutating func write(utf8 text: String) {
        var text = text
        text.withUTF8 { write(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// Bounds-checked little-endian reads; every read that would pass the end throws.
@usableFromInline
struct ByteReader {
    @usableFromInline let base: UnsafeRawBufferPointer
    @usableFromInline var offset = 0

    @inlinable init(_ base: UnsafeRawBufferPointer) { self.base = base }

    @inlinable var remaining: Int { base.count - offset }

    @inlinable mutating func read<T: FixedWidthInteger>(_: T.Type) throws(RecordFormatError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .truncated }
        let value = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += size
        return T(littleEndian: value)
    }

    @inlinable mutating func readBytes(_ count: Int) throws(RecordFormatError) -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else { throw .truncated }
        let slice = UnsafeRawBufferPointer(rebasing: base[offset..<offset + count])
        offset += count
        return slice
    }

    @inlinable mutating func readString(_ count: Int) throws(RecordFormatError) -> String {
        try decodeUTF8(readBytes(count))
    }
}

/// Why bytes are not a valid record of a format this code knows.
public enum RecordFormatError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated
    case unknownVersion(UInt8)
    case unknownKind(UInt8)
    case unknownReason(kind: UInt8, reason: UInt8)
    case unknownProtocolVersion(UInt8)
    case reservedBitsSet
    case invalidUTF8
    case lengthMismatch(expected: Int, actual: Int)

    public var description: String {
        switch self {
        case .truncated: "record is truncated"
        case .unknownVersion(let v): "unknown record format version \(v)"
        case .unknownKind(let k): "unknown event kind \(k)"
        case .unknownReason(let k, let r): "unknown reason \(r) for event kind \(k)"
        case .unknownProtocolVersion(let p): "unknown protocol version \(p)"
        case .reservedBitsSet: "reserved bits are set"
        case .invalidUTF8: "a name is not valid UTF-8"
        case .lengthMismatch(let e, let a): "record length is \(a) bytes, its fields say \(e)"
        }
    }
}

/// Validated UTF-8 to String. Names are nearly always ASCII, and the general validating
/// initializer costs more than the rest of decoding a record, so ASCII takes a short cut.
@inlinable
func decodeUTF8(_ bytes: UnsafeRawBufferPointer) throws(RecordFormatError) -> String {
    var ascii = true
    for byte in bytes where byte >= 0x80 {
        ascii = false
        break
    }
    if ascii {
        return String(unsafeUninitializedCapacity: bytes.count) { buffer in
            _ = buffer.initialize(from: bytes)
            return bytes.count
        }
    }
    guard let text = String(validating: bytes, as: UTF8.self) else { throw .invalidUTF8 }
    return text
}
