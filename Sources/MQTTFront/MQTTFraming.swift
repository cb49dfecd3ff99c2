import Logging
import MQTTCodec
import NIOCore

// MQTT framing, the same for every transport (the NIO handlers of PacketHandlers.swift and
// the epoll transport's RawConnectionIO): decoding with the maximum packet size, encoding in
// the connection's version within the client's Maximum Packet Size, the counts of
// FrontMetrics and the "packet sent" debug line. The metrics and the log are passed in, not
// kept: a held connection keeps the framing's 24 bytes and nothing more.

/// Bytes to packets and packets to bytes for one connection. After the first decoding
/// failure the stream cannot be resynchronised: the failure is given once and every later
/// byte is dropped while the connection closes. One value for both directions, laid out to
/// fill 24 bytes: a held plain-TCP connection keeps it.
struct MQTTFraming {
    private var decoder: MQTTDecoder
    /// Packets are written in the connection's version, once the CONNECT is known.
    var encoder = MQTTEncoder(protocolVersion: .mqtt3_1_1)
    private var failed = false
    /// The client's v5 Maximum Packet Size (MQTT-3.1.2-24); 0: none.
    private var clientMaximumPacketSize: UInt32 = 0

    /// `maximumPacketSize`: the largest packet accepted from the client.
    init(maximumPacketSize: Int = MQTTDecoder.largestPacketSize) {
        decoder = MQTTDecoder(maximumPacketSize: maximumPacketSize)
    }

    // MARK: Reading

    /// The next packet, or the failure, taken from `buffer`; nil when more bytes are needed.
    /// `metrics` counts the packet's bytes, and PUBLISHes by QoS.
    mutating func next(from buffer: inout ByteBuffer, metrics: FrontMetrics?) -> MQTTInbound? {
        if failed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return nil
        }
        let before = buffer.readerIndex
        switch decoder.decode(&buffer) {
        case .needMoreData:
            return nil
        case .packet(let packet):
            if let metrics {
                metrics.bytesReceived.increment(by: buffer.readerIndex - before)
                if case .publish(let publish) = packet { metrics.messagesReceived[Int(publish.qos.rawValue)].increment() }
            }
            return .packet(packet)
        case .failure(let error):
            failed = true
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .failure(error)
        }
    }

    /// A read that is exactly a DISCONNECT or PINGREQ without a body (a clean end, a
    /// keep-alive), once the CONNECT is known: that packet, counted, without a buffer or the
    /// decoder; nil otherwise.
    func bodilessPacket(_ bytes: UnsafeRawBufferPointer, metrics: FrontMetrics?) -> MQTTPacket? {
        guard !failed, decoder.protocolVersion != nil, let packet = Self.bodilessPacket(bytes) else { return nil }
        metrics?.bytesReceived.increment(by: 2)
        return packet
    }

    /// The packet `bytes` are when they are exactly `E0 00` (DISCONNECT, normal) or `C0 00`
    /// (PINGREQ), as the decoder would read them in either version; nil otherwise.
    static func bodilessPacket(_ bytes: UnsafeRawBufferPointer) -> MQTTPacket? {
        guard bytes.count == 2, bytes[1] == 0 else { return nil }
        switch bytes[0] {
        case 0xE0: return .disconnect(MQTTDisconnect())
        case 0xC0: return .pingreq
        default: return nil
        }
    }

    // MARK: Writing

    /// Larger packets are not sent (MQTT-3.1.2-24); nil: any size.
    mutating func setClientMaximumPacketSize(_ size: Int?) {
        clientMaximumPacketSize = size.map { UInt32(clamping: $0) } ?? 0
    }

    /// Appends `packet` to `buffer`; false when it is not sent, being larger than the client
    /// takes. A packet that cannot be encoded is logged and thrown (nothing is appended).
    @discardableResult
    func write(
        _ packet: MQTTPacket, into buffer: inout ByteBuffer, metrics: FrontMetrics?, logger: Logger,
        remoteAddress: @autoclosure () -> String
    ) throws(MQTTEncodingError) -> Bool {
        do {
            if clientMaximumPacketSize > 0, try encoder.encodedSize(of: packet) > Int(clientMaximumPacketSize) {
                return false
            }
            let size = try encoder.encode(packet, into: &buffer)
            if let metrics {
                metrics.bytesSent.increment(by: size)
                if case .publish(let publish) = packet { metrics.messagesSent[Int(publish.qos.rawValue)].increment() }
            }
            if logger.logLevel <= .debug {
                logger.debug("packet sent", metadata: [
                    "packet_type": "\(packet.type)", "bytes": "\(size)", "remote_address": "\(remoteAddress())",
                ])
            }
            return true
        } catch {
            logger.error("packet encoding failed", metadata: ["packet_type": "\(packet.type)", "error": "\(error)"])
            throw error
        }
    }
}
