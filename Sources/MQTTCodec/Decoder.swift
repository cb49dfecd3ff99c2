import NIOCore

public enum MQTTDecodingResult: Sendable, Equatable {
    /// The buffer holds no complete packet yet; nothing was consumed.
    case needMoreData
    /// One packet; its bytes were consumed.
    case packet(MQTTPacket)
    /// The peer sent something unacceptable: close the connection with `reasonCode`.
    /// Nothing was consumed, and the connection's stream cannot be resynchronised.
    case failure(MQTTDecodingError)
}

/// Decodes packets from the bytes of one connection. Shaped for `ByteToMessageDecoder`: call
/// `decode` while it returns packets, keep partial data in the buffer.
public struct MQTTDecoder: Sendable {
    /// The largest packet MQTT can express: a type byte, four length bytes, 268,435,455 bytes.
    public static let largestPacketSize = 1 + 4 + 268_435_455

    /// nil until CONNECT; only CONNECT is accepted then, and decoding one sets its version.
    public var protocolVersion: MQTTProtocolVersion?
    /// In bytes, the whole packet (fixed header included) as in 5.0's Maximum Packet Size.
    /// Checked from the fixed header, so an oversized packet is refused before its body is
    /// buffered.
    public var maximumPacketSize: Int

    public init(protocolVersion: MQTTProtocolVersion? = nil, maximumPacketSize: Int = MQTTDecoder.largestPacketSize) {
        self.protocolVersion = protocolVersion
        self.maximumPacketSize = maximumPacketSize
    }

    /// Decodes the next packet. A CONNECT is decoded whatever the connection's version (it
    /// carries its own); whether a second CONNECT is acceptable is the front's business.
    public mutating func decode(_ buffer: inout ByteBuffer) -> MQTTDecodingResult {
        let result = Self.decode(&buffer, protocolVersion: protocolVersion, maximumPacketSize: maximumPacketSize)
        if protocolVersion == nil, case .packet(.connect(let connect)) = result {
            protocolVersion = connect.protocolVersion
        }
        return result
    }

    /// The stateless form: `protocolVersion` nil means no CONNECT has been decoded yet.
    public static func decode(
        _ buffer: inout ByteBuffer, protocolVersion: MQTTProtocolVersion?, maximumPacketSize: Int
    ) -> MQTTDecodingResult {
        let start = buffer.readerIndex
        guard let first = buffer.getInteger(at: start, as: UInt8.self) else { return .needMoreData }
        let flags = first & 0x0F
        guard let type = MQTTPacketType(rawValue: first >> 4) else {
            return .failure(MQTTDecodingError(.reservedPacketType(0), packetType: nil, protocolVersion: protocolVersion))
        }
        // Everything the first byte can tell is judged before waiting for the rest.
        func fail(_ problem: MQTTDecodingError.Problem) -> MQTTDecodingResult {
            .failure(MQTTDecodingError(problem, packetType: type, protocolVersion: protocolVersion))
        }
        guard let version = protocolVersion ?? (type == .connect ? .mqtt5 : nil) else {
            return fail(.expectedConnect(type))
        }
        if type == .auth, !version.isV5 {
            return .failure(MQTTDecodingError(.reservedPacketType(15), packetType: nil, protocolVersion: version))
        }
        if type == .publish {
            if let problem = MQTTPublish.checkFlags(flags) { return fail(problem) }
        } else if flags != type.requiredFlags {
            return fail(.invalidFixedHeaderFlags(flags))
        }

        var remainingLength = 0
        var headerLength = 1
        while true {
            guard let byte = buffer.getInteger(at: start + headerLength, as: UInt8.self) else { return .needMoreData }
            remainingLength |= Int(byte & 0x7F) << (7 * (headerLength - 1))
            headerLength += 1
            if byte & 0x80 == 0 { break }
            if headerLength == 5 { return fail(.variableByteIntegerTooLong("remaining length")) }
        }
        let packetLength = headerLength + remainingLength
        guard packetLength <= maximumPacketSize else {
            return fail(.packetTooLarge(size: packetLength, maximum: maximumPacketSize))
        }
        guard let body = buffer.getSlice(at: start + headerLength, length: remainingLength) else {
            return .needMoreData
        }

        var reader = PacketReader(body, type: type, version: type == .connect ? nil : version)
        do throws(MQTTDecodingError) {
            let packet = try decodeBody(&reader, flags: flags, version: version)
            buffer.moveReaderIndex(to: start + packetLength)
            return .packet(packet)
        } catch {
            return .failure(error)
        }
    }

    private static func decodeBody(_ reader: inout PacketReader, flags: UInt8, version: MQTTProtocolVersion)
        throws(MQTTDecodingError) -> MQTTPacket
    {
        switch reader.type {
        case .connect: return .connect(try MQTTConnect.decode(&reader))
        case .connack: return .connack(try MQTTConnAck.decode(&reader, version: version))
        case .publish: return .publish(try MQTTPublish.decode(&reader, flags: flags, version: version))
        case .puback: return .puback(try MQTTPublishResponse.decode(&reader, version: version))
        case .pubrec: return .pubrec(try MQTTPublishResponse.decode(&reader, version: version))
        case .pubrel: return .pubrel(try MQTTPublishResponse.decode(&reader, version: version))
        case .pubcomp: return .pubcomp(try MQTTPublishResponse.decode(&reader, version: version))
        case .subscribe: return .subscribe(try MQTTSubscribe.decode(&reader, version: version))
        case .suback: return .suback(try MQTTSubAck.decode(&reader, version: version))
        case .unsubscribe: return .unsubscribe(try MQTTUnsubscribe.decode(&reader, version: version))
        case .unsuback: return .unsuback(try MQTTUnsubAck.decode(&reader, version: version))
        case .pingreq:
            try reader.expectEnd()
            return .pingreq
        case .pingresp:
            try reader.expectEnd()
            return .pingresp
        case .disconnect: return .disconnect(try MQTTDisconnect.decode(&reader, version: version))
        case .auth: return .auth(try MQTTAuth.decode(&reader))
        }
    }
}
