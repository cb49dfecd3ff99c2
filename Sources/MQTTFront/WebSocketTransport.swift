import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// MQTT over WebSocket (MQTT 5.0 and 3.1.1, section 6): an HTTP/1.1 upgrade at one path with
/// the subprotocol `mqtt`, then binary frames that carry the MQTT byte stream. Frame and packet
/// boundaries are unrelated (a packet may span frames, a frame may hold several packets), so
/// the frames' payloads are joined into one stream for the same decoder, encoder and
/// connection handler as TCP.
///
/// The handshake, like EMQX's defaults (and mosquitto's libwebsockets for the subprotocol):
/// - another path: 404; a method other than GET: 405;
/// - `Sec-WebSocket-Protocol` offered with `mqtt`: the answer names `mqtt`; else with
///   `mqttv3.1` (old MQTT 3.1 clients, which mosquitto also serves): that one; offered with
///   neither: 400; not offered at all: accepted without one (MQTT-6.0.0-3 asks clients to
///   offer `mqtt`, but EMQX and mosquitto accept those that do not);
/// - a request on the path that is not a valid WebSocket upgrade: 426 (no Upgrade) or 400.
enum WebSocketTransport {
    static let subprotocol = "mqtt"
    /// What MQTT 3.1 clients (Paho JavaScript's first versions) offer instead.
    static let legacySubprotocol = "mqttv3.1"

    /// What to answer an HTTP request at a WebSocket listener.
    enum Handshake: Equatable {
        /// Upgrade, with these extra response headers.
        case upgrade(HTTPHeaders)
        case refuse(HTTPResponseStatus, String)
    }

    /// The decision on a request head, before the WebSocket key checks NIO makes.
    static func handshake(for head: HTTPRequestHead, path: String) -> Handshake {
        let requestPath = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first
            .map(String.init) ?? head.uri
        guard requestPath == path else {
            return .refuse(.notFound, "no MQTT over WebSocket at \(requestPath); use \(path)")
        }
        guard head.method == .GET else { return .refuse(.methodNotAllowed, "a WebSocket upgrade is a GET") }
        let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map { $0.trimmingSpaces() }
            .filter { !$0.isEmpty }
        var headers = HTTPHeaders()
        if !offered.isEmpty {
            let names = Set(offered.map { $0.lowercased() })
            guard let chosen = [subprotocol, legacySubprotocol].first(where: names.contains) else {
                return .refuse(.badRequest, "WebSocket subprotocol \(subprotocol) required, offered: \(offered.joined(separator: ", "))")
            }
            headers.add(name: "Sec-WebSocket-Protocol", value: chosen)
        }
        return .upgrade(headers)
    }

    /// Sets up a new connection of a WebSocket listener: HTTP until the upgrade at `path`, then
    /// frames to bytes and `mqttHandlers` (the same as TCP's). `services.connectTimeout` also
    /// bounds the HTTP part.
    static func addPipeline(
        _ channel: any Channel, path: String, services: FrontServices,
        mqttHandlers: @escaping @Sendable (any Channel) throws -> Void
    ) throws {
        let operations = channel.pipeline.syncOperations
        let http = WebSocketHTTPHandler(path: path, logger: services.logger, timeout: services.tunables.connectTimeout)
        let httpBound = NIOLoopBound(http, eventLoop: channel.eventLoop)
        let logger = services.logger
        // A frame may hold a whole packet (most clients send one packet per frame): room for
        // the largest packet accepted, so that an oversized one gets MQTT's 0x95, not a close 1009.
        let maxFrameSize = min(Int(UInt32.max), services.tunables.maximumPacketSize + 64 * 1024)
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maxFrameSize, automaticErrorHandling: true,
            shouldUpgrade: { channel, head in
                switch handshake(for: head, path: path) {
                case .upgrade(let headers): channel.eventLoop.makeSucceededFuture(headers)
                case .refuse: channel.eventLoop.makeSucceededFuture(nil)  // WebSocketHTTPHandler answers
                }
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    operations.removeHandler(httpBound.value, promise: nil)
                    try operations.addHandler(WebSocketMQTTBridge(logger: logger))
                    try mqttHandlers(channel)
                }
            })
        try operations.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }), withErrorHandling: true)
        try operations.addHandler(http)
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> String {
        String(drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

/// The HTTP side of a WebSocket listener: answers every request that is not upgraded (wrong
/// path, wrong subprotocol, not an upgrade) with a status and closes; closes a connection that
/// sends no request in time. Removed from the pipeline when the upgrade succeeds.
final class WebSocketHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let path: String
    private let logger: Logger
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?
    private var answered = false

    init(path: String, logger: Logger, timeout: TimeAmount) {
        self.path = path
        self.logger = logger
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = context.loopBound
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [logger] in
            let context = bound.value
            logger.notice("mqtt: closed remote=\(context.remoteAddressText ?? "-") why=no WebSocket upgrade in time")
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data), !answered else { return }
        answered = true
        let status: HTTPResponseStatus
        let text: String
        switch WebSocketTransport.handshake(for: head, path: path) {
        case .refuse(let refusal, let why):
            (status, text) = (refusal, why)
        case .upgrade:
            // Right path and subprotocol, yet not upgraded: no or a broken WebSocket handshake.
            let upgrade = head.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
            (status, text) =
                upgrade
                ? (.badRequest, "bad WebSocket handshake (Sec-WebSocket-Key, Sec-WebSocket-Version 13)")
                : (.upgradeRequired, "MQTT here is over WebSocket: upgrade with subprotocol mqtt")
        }
        logger.notice(
            "mqtt: refused WebSocket remote=\(context.remoteAddressText ?? "-") path=\(head.uri) why=\(text) status=\(status.code)")
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(text.utf8.count + 1)")
        headers.add(name: "Connection", value: "close")
        if status == .upgradeRequired {
            headers.add(name: "Upgrade", value: "websocket")
            headers.add(name: "Sec-WebSocket-Version", value: "13")
        }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text + "\n")))), promise: nil)
        let bound = context.loopBound
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            bound.value.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A refused upgrade is followed by its request, answered in channelRead.
        if error is NIOWebSocketUpgradeError { return }
        logger.debug("mqtt: WebSocket HTTP remote=\(context.remoteAddressText ?? "-"): \(error)")
        context.close(promise: nil)
    }
}

/// After the upgrade: binary (and continuation) frames in, their payloads as one byte stream
/// to the MQTT decoder; MQTT bytes out, one binary frame per write. Pings get pongs, a close
/// is answered and ends the connection; a text frame is not MQTT (MQTT-6.0.0-1): close 1003.
/// When the MQTT side closes the connection, a close frame (1000) goes first.
final class WebSocketMQTTBridge: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private let logger: Logger
    private var closeSent = false
    /// The opcode of the message whose continuation frames may follow.
    private var fragmentedOpcode: WebSocketOpcode?

    init(logger: Logger) {
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .continuation:
            let opcode = frame.opcode == .continuation ? fragmentedOpcode : .binary
            guard opcode == .binary else {
                refuse(context, frame.opcode == .continuation ? "continuation frame without a message" : "text frame")
                return
            }
            fragmentedOpcode = frame.fin ? nil : .binary
            let payload = frame.unmaskedData
            if payload.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(payload)) }
        case .text:
            refuse(context, "text frame")
        case .ping:
            guard !closeSent else { return }
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .pong:
            break
        case .connectionClose:
            // Answered with the peer's own code (RFC 6455 5.5.1), then the TCP connection ends.
            var data = frame.unmaskedData
            let code = data.readWebSocketErrorCode() ?? .normalClosure
            sendClose(context, code: code)
        default:
            refuse(context, "unknown opcode \(frame.opcode)")
        }
    }

    private func refuse(_ context: ChannelHandlerContext, _ why: String) {
        logger.warning(
            "mqtt: closed WebSocket remote=\(context.remoteAddressText ?? "-") why=\(why) is not MQTT (MQTT-6.0.0-1)")
        sendClose(context, code: .unacceptableData)
    }

    private func sendClose(_ context: ChannelHandlerContext, code: WebSocketErrorCode) {
        guard !closeSent else {
            context.close(promise: nil)
            return
        }
        closeSent = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        let bound = context.loopBound
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)))
            .assumeIsolated().whenComplete { _ in bound.value.close(promise: nil) }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        guard !closeSent else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: bytes)), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, !closeSent, context.channel.isActive {
            closeSent = true
            var data = context.channel.allocator.buffer(capacity: 2)
            data.write(webSocketErrorCode: .normalClosure)
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)), promise: nil)
        }
        context.close(mode: mode, promise: promise)
    }
}
