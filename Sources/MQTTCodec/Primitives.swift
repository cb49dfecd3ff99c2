import NIOCore

/// The largest value a variable byte integer of four bytes carries (section 1.5.5).
let maximumVariableByteInteger = 268_435_455

func variableByteIntegerSize(_ value: Int) -> Int {
    switch value {
    case ..<128: 1
    case ..<16_384: 2
    case ..<2_097_152: 3
    default: 4
    }
}

/// Reads the fields of one packet whose bytes are all present. Running out of bytes here is
/// therefore malformed, never "need more data". Every failure names the packet and version.
struct PacketReader {
    var buffer: ByteBuffer
    let type: MQTTPacketType
    /// nil only while a CONNECT's protocol level has not been read.
    var version: MQTTProtocolVersion?

    init(_ buffer: ByteBuffer, type: MQTTPacketType, version: MQTTProtocolVersion?) {
        self.buffer = buffer
        self.type = type
        self.version = version
    }

    func failure(_ problem: MQTTDecodingError.Problem) -> MQTTDecodingError {
        MQTTDecodingError(problem, packetType: type, protocolVersion: version)
    }

    var isAtEnd: Bool { buffer.readableBytes == 0 }

    func expectEnd() throws(MQTTDecodingError) {
        guard buffer.readableBytes == 0 else { throw failure(.trailingBytes(buffer.readableBytes)) }
    }

    mutating func readByte(_ field: String) throws(MQTTDecodingError) -> UInt8 {
        guard let value = buffer.readInteger(as: UInt8.self) else { throw failure(.truncated(field)) }
        return value
    }

    mutating func readUInt16(_ field: String) throws(MQTTDecodingError) -> UInt16 {
        guard let value = buffer.readInteger(as: UInt16.self) else { throw failure(.truncated(field)) }
        return value
    }

    mutating func readUInt32(_ field: String) throws(MQTTDecodingError) -> UInt32 {
        guard let value = buffer.readInteger(as: UInt32.self) else { throw failure(.truncated(field)) }
        return value
    }

    /// Packet identifiers are never 0 where they are required (MQTT-2.2.1-3).
    mutating func readPacketIdentifier() throws(MQTTDecodingError) -> UInt16 {
        let value = try readUInt16("packet identifier")
        guard value != 0 else { throw failure(.zeroPacketIdentifier) }
        return value
    }

    /// Up to four bytes; a continuation bit on the fourth is malformed (section 1.5.5).
    /// Non-minimal encodings are accepted: the spec binds senders, and refusing them buys nothing.
    mutating func readVariableByteInteger(_ field: String) throws(MQTTDecodingError) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<4 {
            let byte = try readByte(field)
            value |= UInt32(byte & 0x7F) << (7 * index)
            if byte & 0x80 == 0 { return value }
        }
        throw failure(.variableByteIntegerTooLong(field))
    }

    /// A UTF-8 Encoded String (section 1.5.4): valid UTF-8, so no surrogates and nothing
    /// overlong, and no U+0000, whose only UTF-8 encoding is the byte 0.
    mutating func readString(_ field: String) throws(MQTTDecodingError) -> String {
        let length = Int(try readUInt16(field))
        guard buffer.readableBytes >= length else { throw failure(.truncated(field)) }
        if length == 0 { return "" }
        let checked = buffer.withUnsafeReadableBytes { raw -> CheckedString in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[..<length])
            if bytes.contains(0) { return .nullCharacter }
            guard let string = bytes.withMemoryRebound(to: UInt8.self, { String(validating: $0, as: UTF8.self) })
            else { return .invalid }
            return .valid(string)
        }
        switch checked {
        case .valid(let string):
            buffer.moveReaderIndex(forwardBy: length)
            return string
        case .nullCharacter: throw failure(.nullCharacter(field))
        case .invalid: throw failure(.invalidUTF8(field))
        }
    }

    /// Binary Data (section 1.5.6); a slice of the packet, so nothing is copied.
    mutating func readBinary(_ field: String) throws(MQTTDecodingError) -> ByteBuffer {
        let length = Int(try readUInt16(field))
        guard let slice = buffer.readSlice(length: length) else { throw failure(.truncated(field)) }
        return slice
    }

    /// The rest of the packet (PUBLISH payload).
    mutating func readRest() -> ByteBuffer {
        buffer.readSlice(length: buffer.readableBytes)!
    }
}

private enum CheckedString {
    case valid(String)
    case nullCharacter
    case invalid
}

/// Well-formed UTF-8 (RFC 3629) without building a String: for payloads marked UTF-8, where
/// U+0000 is allowed because the payload is not an MQTT string.
func isValidUTF8(_ bytes: ByteBuffer) -> Bool {
    bytes.withUnsafeReadableBytes { raw in
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = raw.makeIterator()
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }
}

extension ByteBuffer {
    @discardableResult
    mutating func writeVariableByteInteger(_ value: Int) -> Int {
        var value = value
        var written = 0
        repeat {
            var byte = UInt8(truncatingIfNeeded: value & 0x7F)
            value >>= 7
            if value > 0 { byte |= 0x80 }
            writeInteger(byte)
            written += 1
        } while value > 0
        return written
    }

    mutating func writeMQTTString(_ string: String) {
        writeInteger(UInt16(truncatingIfNeeded: string.utf8.count))
        writeString(string)
    }

    mutating func writeMQTTBinary(_ bytes: ByteBuffer) {
        writeInteger(UInt16(truncatingIfNeeded: bytes.readableBytes))
        writeImmutableBuffer(bytes)
    }
}

/// The encoded size of a UTF-8 string field; refuses what a 16-bit length cannot describe.
func stringSize(_ string: String, field: @autoclosure () -> String) throws(MQTTEncodingError) -> Int {
    let count = string.utf8.count
    guard count <= 65_535 else { throw MQTTEncodingError(.stringTooLong(field())) }
    return 2 + count
}

func binarySize(_ bytes: ByteBuffer, field: @autoclosure () -> String) throws(MQTTEncodingError) -> Int {
    let count = bytes.readableBytes
    guard count <= 65_535 else { throw MQTTEncodingError(.binaryTooLong(field())) }
    return 2 + count
}

/// PUBLISH topic names may not hold wildcards; filters may. Byte scan: both are ASCII.
func containsWildcard(_ string: String) -> Bool {
    string.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
}
