#if os(Linux)
import EpollTransport
import MQTTCodec
import NIOCore

/// MQTT over the epoll transport's byte stream (plain TCP): frames and decodes the client's
/// packets for its `MQTTConnection`, encodes and writes the answers. One object with its
/// `RawConnection`: a held connection is this and its `MQTTConnection`. On its loop only.
final class RawConnectionIO: RawConnection, ConnectionIO, GracefulClose {
    // 8 and 24 bytes after RawConnection's 84: the object stays within 128 bytes of malloc.
    private let connection: MQTTConnection
    private var framing: MQTTFraming

    init(descriptor: Int32, loop: EpollEventLoop, services: FrontServices) {
        connection = MQTTConnection(services: services, eventLoop: loop)
        framing = MQTTFraming(maximumPacketSize: connection.tunables.maximumPacketSize)
        super.init(descriptor: descriptor, loop: loop)
        connection.attach(self)
    }

    /// Bytes the socket has not taken, above the mark. Writes wait for the end of the turn
    /// (`flushWrites`): what this turn wrote is offered to the socket first, so that only what
    /// it refuses counts, not a turn's worth of deliveries.
    var isAboveOutboundHighWater: Bool {
        let mark = connection.tunables.outboundHighWaterBytes
        guard outboundBytes > mark else { return false }
        flush()
        return outboundBytes > mark
    }

    var localAddressText: String? { RawSocketAddress.localText(of: descriptor) }

    // MARK: The byte stream

    override func started(remoteAddress: String?) {
        connection.start(remoteAddress: remoteAddress)
    }

    override func receivedInPlace(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let packet = framing.bodilessPacket(bytes, metrics: connection.services.metrics) else { return false }
        connection.process(.packet(packet))
        if !connection.mayRead { pauseReading() }
        return true
    }

    override func received(_ buffer: inout ByteBuffer) {
        let metrics = connection.services.metrics
        while isOpen {
            guard let inbound = framing.next(from: &buffer, metrics: metrics) else {
                if !connection.mayRead { pauseReading() }
                return
            }
            connection.process(inbound)
            if case .failure = inbound { return }
        }
    }

    override func closed(error: RawSocketError?) {
        if let error { connection.failed(error) }
        connection.inactive()
    }

    // MARK: ConnectionIO

    func write(_ packet: MQTTPacket) {
        let services = connection.services
        appendOutbound { buffer in
            _ = try? framing.write(
                packet, into: &buffer, metrics: services.metrics, logger: services.logger,
                remoteAddress: connection.remoteAddressText)
        }
    }

    /// Sent once the loop has done the work at hand: every packet this connection is given in
    /// one turn of the loop (answers to a read, a broker's deliveries) goes out in one `send`.
    func flushWrites() {
        flushSoon()
    }

    func close(sending packets: [MQTTPacket]) {
        close(sending: packets, grace: connection.tunables.closeGrace, on: loop)
    }

    func setProtocolVersion(_ version: MQTTProtocolVersion) {
        framing.encoder.protocolVersion = version
    }

    func setMaximumPacketSize(_ size: Int?) {
        framing.setClientMaximumPacketSize(size)
    }

    var channel: (any Channel)? { nil }

    // MARK: GracefulClose

    func writeThenClose(_ packets: [MQTTPacket]) -> Bool {
        guard isOpen else { return true }
        for packet in packets { write(packet) }
        return closeAfterFlush()
    }

    func closingAnyway(_ timer: Scheduled<Void>) {
        // Not cancelled: it finds the socket closed if the client read in time. Hearing of the
        // close here would cost every held connection a field.
    }

    func closeAtOnce() {
        close()
    }
}

/// On an epoll loop a connection is its own timer handler (its connect timeout, then its
/// keep-alive): no object per timer, no generic call.
extension MQTTConnection: EpollTimerHandler {
    func timerFired(on loop: EpollEventLoop) {
        handleScheduledCallback(eventLoop: loop)
    }
}
#endif
