import Logging
import MQTTCodec
import NIOCore

/// Bytes to packets on a NIO channel (MQTTFraming.swift does the framing).
struct MQTTFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = MQTTInbound

    private var framing: MQTTFraming
    /// Counts PUBLISHes by QoS and the bytes of every packet; nil: nothing is counted.
    private let metrics: FrontMetrics?

    init(maximumPacketSize: Int, metrics: FrontMetrics? = nil) {
        framing = MQTTFraming(maximumPacketSize: maximumPacketSize)
        self.metrics = metrics
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let inbound = framing.next(from: &buffer, metrics: metrics) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(inbound))
        if case .failure = inbound { return .needMoreData }
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws
        -> DecodingState
    {
        // A partial packet at the end is simply lost with the connection.
        try decode(context: context, buffer: &buffer)
    }
}

/// Packets to bytes on a NIO channel, in the connection's version (set by the connection
/// handler once the CONNECT is known; same event loop, so a plain property).
final class MQTTPacketEncoderHandler: ChannelOutboundHandler {
    typealias OutboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    /// Its writing half only (the decoder has its own).
    var framing = MQTTFraming()
    /// Counts PUBLISHes by QoS and the bytes of every packet sent; nil: nothing is counted.
    private let metrics: FrontMetrics?
    private let logger: Logger

    init(metrics: FrontMetrics?, logger: Logger) {
        self.metrics = metrics
        self.logger = logger
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let packet = unwrapOutboundIn(data)
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            guard try framing.write(
                packet, into: &buffer, metrics: metrics, logger: logger, remoteAddress: context.remoteAddressText ?? "-")
            else {
                promise?.succeed()
                return
            }
        } catch {
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
