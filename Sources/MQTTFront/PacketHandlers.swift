import MQTTCodec
import NIOCore

/// Bytes to packets. After the first failure the stream cannot be resynchronised: the
/// failure goes up once and every later byte is dropped while the connection closes.
struct MQTTFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = MQTTInbound

    private var decoder: MQTTDecoder
    private var failed = false

    init(maximumPacketSize: Int) {
        decoder = MQTTDecoder(maximumPacketSize: maximumPacketSize)
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if failed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        switch decoder.decode(&buffer) {
        case .needMoreData:
            return .needMoreData
        case .packet(let packet):
            context.fireChannelRead(wrapInboundOut(.packet(packet)))
            return .continue
        case .failure(let error):
            failed = true
            buffer.moveReaderIndex(to: buffer.writerIndex)
            context.fireChannelRead(wrapInboundOut(.failure(error)))
            return .needMoreData
        }
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        // A partial packet at the end is simply lost with the connection.
        try decode(context: context, buffer: &buffer)
    }
}

/// Packets to bytes, in the connection's version (set by the connection handler once the
/// CONNECT is known; same event loop, so a plain property).
final class MQTTPacketEncoderHandler: ChannelOutboundHandler {
    typealias OutboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    var encoder = MQTTEncoder(protocolVersion: .mqtt3_1_1)
    /// The client's v5 Maximum Packet Size: larger packets are not sent (MQTT-3.1.2-24).
    var maximumPacketSize: Int?
    var onEncodingError: ((MQTTPacket, MQTTEncodingError) -> Void)?

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let packet = unwrapOutboundIn(data)
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            if let maximum = maximumPacketSize, try encoder.encodedSize(of: packet) > maximum {
                promise?.succeed()
                return
            }
            try encoder.encode(packet, into: &buffer)
        } catch {
            onEncodingError?(packet, error)
            promise?.fail(error)
            return
        }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}
