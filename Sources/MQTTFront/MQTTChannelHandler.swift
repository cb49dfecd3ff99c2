import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

/// The NIO face of a connection: a handler at the end of the channel's pipeline (after the
/// frame decoder and the packet encoder) that hands everything to its `MQTTConnection`.
final class MQTTChannelHandler: ChannelDuplexHandler, ConnectionIO, GracefulClose {
    typealias InboundIn = MQTTInbound
    typealias InboundOut = Never
    typealias OutboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    private let services: FrontServices
    private let tls: TLSTransport?
    /// Made once the handler knows its event loop (handlerAdded).
    private var connection: MQTTConnection!
    private let encoder: MQTTPacketEncoderHandler
    private var context: ChannelHandlerContext?
    private(set) var channel: (any Channel)?
    /// A `read` from the pipeline held back while the broker or the claim catches up.
    private var readHeld = false
    /// The write of the last packets of a close (`writeThenClose`).
    private var closing: EventLoopFuture<Void>?

    init(services: FrontServices, encoder: MQTTPacketEncoderHandler, tls: TLSTransport? = nil) {
        self.encoder = encoder
        self.services = services
        self.tls = tls
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.channel = context.channel
        connection = MQTTConnection(services: services, eventLoop: context.eventLoop, tls: tls)
        connection.attach(self)
        if context.channel.isActive { connection.start(remoteAddress: context.remoteAddressText) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        connection.transportRemoved()
    }

    func channelActive(context: ChannelHandlerContext) {
        connection.start(remoteAddress: context.remoteAddressText)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.process(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.inactive()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Resets and the like: the channel closes and channelInactive records the loss.
        connection.failed(error)
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if connection.mayRead {
            context.read()
        } else {
            readHeld = true
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
    }

    // MARK: ConnectionIO

    var localAddressText: String? {
        guard let address = channel?.localAddress, let ip = address.ipAddress, let port = address.port else { return nil }
        return address.protocol == .inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    func write(_ packet: MQTTPacket) {
        context?.write(wrapOutboundOut(packet), promise: nil)
    }

    /// The channel stops being writable above the high-water mark set on it at accept
    /// (`MQTTFront.setConnectionOptions`).
    var isAboveOutboundHighWater: Bool { !(channel?.isWritable ?? true) }

    func flushWrites() {
        context?.flush()
    }

    func close(sending packets: [MQTTPacket]) {
        close(sending: packets, grace: connection.tunables.closeGrace, on: connection.eventLoop)
    }

    func resumeReading() {
        guard readHeld, let context else { return }
        readHeld = false
        context.read()
    }

    func setProtocolVersion(_ version: MQTTProtocolVersion) {
        encoder.framing.encoder.protocolVersion = version
    }

    func setMaximumPacketSize(_ size: Int?) {
        encoder.framing.setClientMaximumPacketSize(size)
    }

    // MARK: GracefulClose

    func writeThenClose(_ packets: [MQTTPacket]) -> Bool {
        guard let context else { return true }
        guard let last = packets.last else {
            context.close(promise: nil)
            return true
        }
        for packet in packets.dropLast() { context.write(wrapOutboundOut(packet), promise: nil) }
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(last), promise: written)
        written.futureResult.assumeIsolated().whenComplete { [self] _ in self.context?.close(promise: nil) }
        closing = written.futureResult
        return false
    }

    func closingAnyway(_ timer: Scheduled<Void>) {
        // Once the last packet is written (or failed) the channel is closed: no grace left to wait.
        closing?.whenComplete { _ in timer.cancel() }
    }

    func closeAtOnce() {
        channel?.close(promise: nil)
    }
}
