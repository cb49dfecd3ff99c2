import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

/// What a connection's logic needs of its transport: a NIO channel (`MQTTChannelHandler`,
/// TLS and WebSocket listeners) or a bare socket on an `EpollEventLoop` (`RawConnectionIO`,
/// plain TCP). Called on the connection's event loop only.
protocol ConnectionIO: AnyObject {
    /// Queues a packet (encoded in the connection's protocol version); `flushWrites` sends.
    func write(_ packet: MQTTPacket)
    /// Sends what is queued: at once, or (the epoll transport) once the loop has done the
    /// work at hand, so that one turn's packets go out in one write.
    func flushWrites()
    /// Sends `packets`, then closes once they are written.
    func close(sending packets: [MQTTPacket])
    /// Reading was held back (`MQTTConnection.mayRead` was false): read again.
    func resumeReading()
    /// The version packets are encoded in, once the CONNECT is known.
    func setProtocolVersion(_ version: MQTTProtocolVersion)
    /// The client's v5 Maximum Packet Size: larger packets are not sent (MQTT-3.1.2-24).
    func setMaximumPacketSize(_ size: Int?)
    /// More is waiting to be written than the front's outbound high-water mark
    /// (`MQTTFrontConfiguration.outboundHighWaterBytes`): the client does not keep up.
    var isAboveOutboundHighWater: Bool { get }
    /// The NIO channel under a TLS connection (for its client certificate); nil otherwise.
    var channel: (any Channel)? { get }
    /// The listener's end of the connection as `IP:port` (for the authentication webhook).
    var localAddressText: String? { get }
}
