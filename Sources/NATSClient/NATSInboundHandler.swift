// The frames of one connection to one server: the handshake's INFO and PONG, then messages,
// PINGs answered, PONGs for flushes, INFO updates; a lost channel tells the connection.
import NIOCore

final class NATSInboundHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = NATSFrame
    typealias OutboundOut = ByteBuffer

    private weak var connection: NATSConnection?
    private let handshake: Handshake
    private let generation: Int
    private var sawInfo = false
    private var handshaking = true

    init(connection: NATSConnection, handshake: Handshake, generation: Int) {
        self.connection = connection
        self.handshake = handshake
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .message(let message):
            connection?.deliver(message)
        case .ping:
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "PONG\r\n")), promise: nil)
        case .pong:
            if handshaking {
                handshaking = false
                handshake.pong.succeed()
            } else {
                connection?.pong()
            }
        case .info(let bytes):
            if !sawInfo {
                sawInfo = true
                handshake.info.succeed(bytes)
            } else {
                connection?.learn(infoBytes: bytes)
            }
        case .ok:
            break
        case .error(let message):
            // After the handshake the server closes the connection itself on errors that matter.
            if handshaking { handshake.fail(NATSError.server(message)) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshake.fail(NATSError.connectionLost)
        connection?.lost(generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        handshake.fail(error)
        context.close(promise: nil)
    }
}
