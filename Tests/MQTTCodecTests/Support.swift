import MQTTCodec
import NIOCore
import Testing

// Shared helpers: encode, decode, and bytes written out by hand.

func bytes(_ buffer: ByteBuffer) -> [UInt8] { Array(buffer.readableBytesView) }

func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

/// A UTF-8 string field: two length bytes, then the bytes.
func mqttString(_ text: String) -> [UInt8] {
    let utf8 = Array(text.utf8)
    return [UInt8(utf8.count >> 8), UInt8(utf8.count & 0xFF)] + utf8
}

func variableByteInteger(_ value: Int) -> [UInt8] {
    var value = value
    var out: [UInt8] = []
    repeat {
        var byte = UInt8(value & 0x7F)
        value >>= 7
        if value > 0 { byte |= 0x80 }
        out.append(byte)
    } while value > 0
    return out
}

/// A whole packet from its first byte and body.
func frame(_ first: UInt8, _ body: [UInt8]) -> [UInt8] {
    [first] + variableByteInteger(body.count) + body
}

func encode(_ packet: MQTTPacket, _ version: MQTTProtocolVersion) throws -> [UInt8] {
    var out = ByteBuffer()
    let encoder = MQTTEncoder(protocolVersion: version)
    let written = try encoder.encode(packet, into: &out)
    #expect(written == out.readableBytes)
    #expect(try encoder.encodedSize(of: packet) == written)
    return bytes(out)
}

/// Decodes one packet that must use every byte given. `version` nil means "before CONNECT".
func decode(
    _ input: [UInt8], _ version: MQTTProtocolVersion?, maximumPacketSize: Int = MQTTDecoder.largestPacketSize
) -> MQTTDecodingResult {
    var input = buffer(input)
    let before = input.readableBytes
    let result = MQTTDecoder.decode(&input, protocolVersion: version, maximumPacketSize: maximumPacketSize)
    switch result {
    case .packet: #expect(input.readableBytes == 0, "a decoded packet consumes its bytes")
    case .needMoreData, .failure: #expect(input.readableBytes == before, "nothing is consumed")
    }
    return result
}

func isPacket(_ result: MQTTDecodingResult) -> Bool {
    if case .packet = result { true } else { false }
}

/// The problem a decode must report; fails the test if it decodes.
func decodingProblem(_ input: [UInt8], _ version: MQTTProtocolVersion?, maximumPacketSize: Int = .max)
    -> MQTTDecodingError?
{
    switch decode(input, version, maximumPacketSize: maximumPacketSize) {
    case .failure(let error): return error
    case let other:
        Issue.record("expected a failure, got \(other)")
        return nil
    }
}

/// Encodes, decodes, and encodes again: the value and the bytes must survive.
@discardableResult
func roundTrip(_ packet: MQTTPacket, _ version: MQTTProtocolVersion, expect expected: MQTTPacket? = nil) throws
    -> [UInt8]
{
    let encoded = try encode(packet, version)
    let decodeVersion: MQTTProtocolVersion? = packet.type == .connect ? nil : version
    let result = decode(encoded, decodeVersion)
    #expect(result == .packet(expected ?? packet))
    if case .packet(let decoded) = result {
        #expect(try encode(decoded, version) == encoded)
    }
    return encoded
}
