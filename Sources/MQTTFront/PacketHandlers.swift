import Logging
import MQTTCodec
import NIOCore

/// Bytes to packets. After the first failure the stream cannot be resynchronised: the
/// failure goes up once and every later byte is dropped while the connection closes.
struct MQTTFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = MQTTInbound

    private var decoder: MQTTDecoder
    private var failed = false
    /// Counts PUBLISHes by QoS and the bytes of every packet; nil: nothing is counted.
    private let metrics: FrontMetrics?

    init(maximumPacketSize: Int, metrics: FrontMetrics? = nil) {
        decoder = MQTTDecoder(maximumPacketSize: maximumPacketSize)
        self.metrics = metrics
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if failed {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        let before = buffer.readerIndex
        switch decoder.decode(&buffer) {
        case .needMoreData:
            return .needMoreData
        case .packet(let packet):
            if let metrics {
                metrics.bytesReceived.increment(by: buffer.readerIndex - before)
                if case .publish(let publish) = packet { metrics.messagesReceived[Int(publish.qos.rawValue)].increment() }
            }
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
    /// Counts PUBLISHes by QoS and the bytes of every packet sent; nil: nothing is counted.
    var metrics: FrontMetrics?
    /// Set only when debug lines are wanted: one "packet sent" line per packet.
    var debugLogger: Logger?


    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let packet = unwrapOutboundIn(data)
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            if let maximum = maximumPacketSize, try encoder.encodedSize(of: packet) > maximum {
                promise?.succeed()
                return
            }
            try encoder.encode(packet, into: &buffer)
            if let metrics {
                metrics.bytesSent.increment(by: buffer.readableBytes)
                if case .publish(let publish) = packet { metrics.messagesSent[Int(publish.qos.rawValue)].increment() }
            }
            if let debugLogger {
                debugLogger.debug("packet sent", metadata: [
                    "packet_type": "\(packet.type)", "bytes": "\(buffer.readableBytes)",
                    "remote_address": "\(context.remoteAddressText ?? "-")",
                ])
            }
        } catch {
            onEncodingError?(packet, error)
            promise?.fail(error)
            return
        }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }
}

extension ChannelHandlerContext {
    /// The peer as `IP:port` (`[IPv6]:port`), as log lines and ledger events write it; nil
    /// when the channel has no IP peer.
    var remoteAddressText: String? {
        guard let address = remoteAddress, let ip = address.ipAddress else { return nil }
        return address.protocol == .inet6 ? "[\(ip)]:\(address.port ?? 0)" : "\(ip):\(address.port ?? 0)"
    }
}
