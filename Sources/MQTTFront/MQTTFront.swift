// The MQTT front: listeners and the connection state machine; see DESIGN.md §3.
import Authorization
import CustodyModel
#if os(Linux)
import EpollTransport
#endif
import Logging
import MQTTCodec
import NIOCore
import NIOPosix
import SessionLedger
import Synchronization

extension HostPort {
    /// MQTT's registered port on loopback: where `custody` listens unless told otherwise.
    public static let defaultMQTT = HostPort(host: "127.0.0.1", port: 1883)
}

/// One listener: where, and how its connections carry MQTT. Each transport sets up its
/// pipeline in its own function of `MQTTFront` (`addTCPPipeline`, `addTLSPipeline`, ...).
public struct FrontListener: Sendable, CustomStringConvertible {
    public enum Transport: Sendable {
        /// MQTT over plain TCP (`mqtt`).
        case tcp
        /// MQTT over TLS (`mqtts`); the executable supplies the TLS implementation.
        case tls(TLSTransport)
        /// MQTT over WebSocket (`ws`) at `path`.
        case webSocket(path: String)
    }

    public var address: HostPort
    public var transport: Transport

    public init(address: HostPort, transport: Transport = .tcp) {
        self.address = address
        self.transport = transport
    }

    public var description: String {
        switch transport {
        case .tcp: "mqtt \(address)"
        case .tls: "mqtts \(address)"
        case .webSocket(let path): "ws \(address)\(path)"
        }
    }
}

/// What the front needs of a TLS implementation (the executable builds it from CustodyTLS,
/// so the front does not choose one): a handler first in every new connection's pipeline,
/// and, once the handshake is done, what the client's certificate says (nil without one).
public struct TLSTransport: Sendable {
    /// Adds the TLS handler(s) to a new connection's pipeline; called on its event loop.
    public var addHandlers: @Sendable (any Channel) throws -> Void
    /// The client certificate's identity once the handshake is done (as it is when a CONNECT
    /// arrives); nil without a certificate. Called on the channel's event loop.
    public var peerIdentity: @Sendable (any Channel) throws -> CertificateIdentity?

    public init(
        addHandlers: @escaping @Sendable (any Channel) throws -> Void,
        peerIdentity: @escaping @Sendable (any Channel) throws -> CertificateIdentity?
    ) {
        self.addHandlers = addHandlers
        self.peerIdentity = peerIdentity
    }
}

public struct MQTTFrontConfiguration: Sendable {
    public var listeners: [FrontListener]
    /// Metrics, and who may subscribe to `$custody/...` (FrontMetrics.swift).
    public var operations = FrontOperations()
    /// How long a new connection may take to send its CONNECT.
    public var connectTimeout: TimeAmount
    /// How long a connection being closed may take to read what it is told last (a DISCONNECT,
    /// a refusing CONNACK): a client that stops reading must not keep its socket, nor hold up
    /// the takeover of its session, for ever.
    public var closeGrace: TimeAmount = .seconds(10)
    /// Largest packet accepted from a client, fixed header included; announced in v5 CONNACKs.
    /// Larger ones close the connection (0x95) before their body is buffered. Event Grid's
    /// limit is 512 KiB; the default leaves room above it.
    public var maximumPacketSize: Int
    public var eventLoopThreads: Int
    /// One event loop per core but one: the ledger writer's thread (group commit, fsync) gets
    /// a core of its own. On 2 cores one loop also saves the hand-over of every accepted
    /// connection to the other loop (connect at 64 connections: 87-91 instead of 99-104 µs of
    /// CPU per cycle, and a higher rate).
    public static let defaultEventLoopThreads = max(1, System.coreCount - 1)
    /// v5 Topic Alias Maximum announced in CONNACKs: inbound aliases 1...this (0: none).
    public var topicAliasMaximum: UInt16 = 10
    /// v5 Receive Maximum announced in CONNACKs: QoS 1/2 PUBLISHes a client may have
    /// unacknowledged; one more closes its connection (0x93).
    public var receiveMaximum: UInt16 = 100
    /// Most QoS 1/2 messages in flight to one client: the smaller of this and its Receive
    /// Maximum (v3.1.1 clients: 20, mosquitto's max_inflight_messages).
    public var maximumOutboundInflight = 100
    /// Bytes waiting to be written to one connection above which QoS 0 messages to it are
    /// dropped (QoS 1/2 wait in its session queue, bounded by the in-flight cap).
    public var outboundHighWaterBytes = 1 << 20
    /// How long a connection may stay above the high-water mark before it is closed (v5
    /// DISCONNECT 0x97; ledger `disconnected(quotaExceeded)`).
    public var slowConsumerTimeout: TimeAmount = .seconds(60)
    /// Longest keep-alive, in seconds; nil: the client's. See `ConnectionStateMachine.Settings`.
    public var maximumKeepAlive: UInt16?
    /// Longest topic name of a PUBLISH or a will, in UTF-8 bytes (Event Grid's 256): v5 QoS 1/2
    /// get PUBACK/PUBREC 0x90, v5 QoS 0 DISCONNECT 0x90, 3.1.1 a closed connection.
    public var maximumTopicBytes = 256
    /// Most levels of such a topic name (Event Grid's 15); refused as `maximumTopicBytes`.
    public var maximumTopicLevels = 15
    /// Most bytes of User Properties (names and values) in one packet; more closes the
    /// connection (v5 DISCONNECT 0x95).
    public var maximumUserPropertyBytes = 32 << 10
    /// Longest Response Topic, Correlation Data or Content Type; longer closes the connection (0x95).
    public var maximumPropertyValueBytes = 256
    /// CONNECTs a second per session name (and client); more get CONNACK 0x9F (3.1.1: 3) and
    /// are recorded as `rejected(quotaExceeded)`. 0: no limit. See `ConnectRateLimiter`.
    public var connectsPerSecondPerSession = 1
    /// PUBLISH messages and bytes (topic and payload) a second one connection may send; above,
    /// its socket is not read until its budget refills. 0: no limit. See `PublishThrottle`.
    public var publishMessagesPerSecond = 0
    public var publishBytesPerSecond = 0
    /// Connections open at once on every listener together; one more is closed as soon as it
    /// is accepted. nil: no limit (the executable sets one from its descriptor limit).
    public var maximumConnections: Int?
    /// Filters one SUBSCRIBE may carry (its filters are bounded by the topic limits above).
    public var maxFiltersPerSubscribe = 10
    /// How plain-TCP (`mqtt`) listeners carry their connections. TLS and WebSocket
    /// listeners always use SwiftNIO channels.
    public enum PlainTCPFront: Sendable {
        /// Bare sockets on Custody's own epoll loops (the EpollTransport module, RawConnectionIO.swift):
        /// a connection is one small object instead of a NIO channel and its pipeline. The
        /// default on Linux.
        case epoll
        /// A SwiftNIO channel per connection, as TLS and WebSocket listeners.
        case nio
    }
    #if os(Linux)
    public var plainTCPFront = PlainTCPFront.epoll
    #else
    public var plainTCPFront = PlainTCPFront.nio
    #endif

    public init(
        listeners: [FrontListener] = [FrontListener(address: .defaultMQTT)], connectTimeout: TimeAmount = .seconds(10),
        maximumPacketSize: Int = 512 << 10, eventLoopThreads: Int = MQTTFrontConfiguration.defaultEventLoopThreads
    ) {
        self.listeners = listeners
        self.connectTimeout = connectTimeout
        self.maximumPacketSize = maximumPacketSize
        self.eventLoopThreads = eventLoopThreads
    }

    /// Plain TCP listeners at `listeners`.
    public init(
        listeners: [HostPort], connectTimeout: TimeAmount = .seconds(10),
        maximumPacketSize: Int = 512 << 10, eventLoopThreads: Int = MQTTFrontConfiguration.defaultEventLoopThreads
    ) {
        self.init(
            listeners: listeners.map { FrontListener(address: $0) }, connectTimeout: connectTimeout,
            maximumPacketSize: maximumPacketSize, eventLoopThreads: eventLoopThreads)
    }
}

/// A listener could not be opened.
public struct ListenError: Error, CustomStringConvertible {
    public var address: HostPort
    public var underlying: any Error
    public var description: String { "cannot listen on \(address): \(underlying)" }
}

/// The MQTT listeners and their connections. Every CONNECT becomes a ledger claim; the
/// CONNACK follows only once the decision is durable.
public final class MQTTFront: Sendable {
    private let services: FrontServices
    private let configuration: MQTTFrontConfiguration
    private let group: MultiThreadedEventLoopGroup
    private let servers = Mutex<[any Channel]>([])
    #if os(Linux)
    /// The plain-TCP front's loops (made with the first such listener) and its listeners.
    private let epoll = Mutex<(loops: [EpollEventLoop], listeners: [RawTCPListener])>(([], []))
    #endif

    public init(
        ledger: any SessionAuthority, pubsub: (any PubSubEngine)?, configuration: MQTTFrontConfiguration = .init(),
        logger: Logger = Logger(label: "custody.mqtt"), authority: (any IdentityAuthority)? = nil,
        access: any AccessControl = OpenAccess()
    ) {
        self.configuration = configuration
        self.services = FrontServices(
            ledger: ledger, pubsub: pubsub, logger: logger, configuration: configuration, authority: authority,
            access: access)
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.eventLoopThreads))
    }

    /// Opens every listener; returns the addresses actually bound (port 0 becomes a real port),
    /// in the order of `configuration.listeners`. If one fails, those already open are closed
    /// and the error names the address.
    public func start() async throws -> [HostPort] {
        var bound: [HostPort] = []
        for listener in configuration.listeners {
            let address = listener.address
            do {
                #if os(Linux)
                if case .tcp = listener.transport, configuration.plainTCPFront == .epoll {
                    bound.append(HostPort(host: address.host, port: try startEpollListener(address)))
                    continue
                }
                #endif
                let bootstrap: ServerBootstrap
                switch listener.transport {
                case .tcp:
                    bootstrap = serverBootstrap { [services] channel in try Self.addTCPPipeline(channel, services) }
                case .tls(let tls):
                    bootstrap = serverBootstrap { [services] channel in try Self.addTLSPipeline(channel, tls, services) }
                case .webSocket(let path):
                    bootstrap = serverBootstrap { [services] channel in try Self.addWebSocketPipeline(channel, path, services) }
                }
                let channel = try await bootstrap.bind(host: address.host, port: address.port).get()
                servers.withLock { $0.append(channel) }
                bound.append(HostPort(host: address.host, port: channel.localAddress?.port ?? address.port))
            } catch {
                await closeListeners()
                throw ListenError(address: address, underlying: error)
            }
        }
        return bound
    }

    #if os(Linux)
    /// A plain-TCP listener on the epoll loops; returns its port.
    private func startEpollListener(_ address: HostPort) throws -> Int {
        try epoll.withLock { epoll in
            if epoll.loops.isEmpty {
                let count = max(1, configuration.eventLoopThreads)
                epoll.loops = try (0..<count).map { try EpollEventLoop(name: "custody-mqtt-\($0)", logger: services.logger) }
            }
            let listener = try RawTCPListener(
                host: address.host, port: address.port, loops: epoll.loops, logger: services.logger
            ) { [services] descriptor, loop in
                RawConnectionIO(descriptor: descriptor, loop: loop, services: services)
            }
            epoll.listeners.append(listener)
            return listener.port
        }
    }
    #endif

    /// A server bootstrap whose connections get their pipeline from `pipeline` (on their loop).
    private func serverBootstrap(
        _ pipeline: @escaping @Sendable (any Channel) throws -> Void
    ) -> ServerBootstrap {
        let services = self.services
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Self.setConnectionOptions(channel, outboundHighWater: services.tunables.outboundHighWaterBytes)
                    try pipeline(channel)
                }
            }
    }

    /// A new connection's options, set directly on its loop: as `childChannelOption`s each
    /// cost a chain of futures (about 15 allocations per connection for these three).
    private static func setConnectionOptions(_ channel: any Channel, outboundHighWater: Int) throws {
        guard let options = channel.syncOptions else {
            throw ChannelError.operationUnsupported
        }
        // Not writable above the mark: MQTTChannelHandler.isAboveOutboundHighWater.
        try options.setOption(
            .writeBufferWaterMark, value: .init(low: outboundHighWater / 2, high: outboundHighWater))
        try options.setOption(.socketOption(.tcp_nodelay), value: 1)
        try options.setOption(.maxMessagesPerRead, value: 16)
        try options.setOption(.recvAllocator, value: receiveBuffers())
    }

    /// Each connection keeps its last receive buffer for the next read. NIO starts those at
    /// 2 KiB, most of which an idle MQTT connection (CONNECT, PINGREQ) never uses; from 256
    /// bytes they grow (and shrink) with the reads as before (up to NIO's 64 KiB).
    static func receiveBuffers() -> AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65_536)
    }

    /// The MQTT handlers every transport ends with: framing, encoding, the connection.
    private static func addMQTTHandlers(
        _ channel: any Channel, _ services: FrontServices, tls: TLSTransport? = nil
    ) throws {
        let encoder = MQTTPacketEncoderHandler(metrics: services.metrics, logger: services.logger)
        let operations = channel.pipeline.syncOperations
        try operations.addHandler(ByteToMessageHandler(
            MQTTFrameDecoder(maximumPacketSize: services.tunables.maximumPacketSize, metrics: services.metrics)))
        try operations.addHandler(encoder)
        try operations.addHandler(MQTTChannelHandler(services: services, encoder: encoder, tls: tls))
    }

    /// `mqtt`: MQTT straight on the TCP stream.
    private static func addTCPPipeline(_ channel: any Channel, _ services: FrontServices) throws {
        try addMQTTHandlers(channel, services)
    }

    /// `mqtts`: the TLS handler first, then MQTT.
    private static func addTLSPipeline(_ channel: any Channel, _ tls: TLSTransport, _ services: FrontServices) throws {
        try tls.addHandlers(channel)
        try addMQTTHandlers(channel, services, tls: tls)
    }

    /// `ws`: HTTP until the upgrade at `path` (subprotocol `mqtt`), then MQTT in binary frames
    /// (WebSocketTransport.swift).
    private static func addWebSocketPipeline(_ channel: any Channel, _ path: String, _ services: FrontServices) throws {
        try WebSocketTransport.addPipeline(channel, path: path, services: services) { channel in
            try addMQTTHandlers(channel, services)
        }
    }

    /// Sessions the ledger expired: their pub/sub state goes too.
    /// R4 from another front (the ledger socket): `connection`, if it is one of this front's,
    /// lost its session and is closed (0x8E).
    public func takeOver(_ connection: ConnectionNumber) {
        _ = services.registry.takeOver(connection)
    }

    /// A cluster node whose lease lapsed stops serving: `connection`, if it is one of this
    /// front's, is closed with v5 DISCONNECT 0x9C Use another server (MQTT 5 allows 0x88
    /// Server unavailable only in a CONNACK, which is what this node's CONNECTs get now);
    /// its end is recorded by the cluster authority, as a takeover's is.
    public func serverUnavailable(_ connection: ConnectionNumber) {
        _ = services.registry.takeOver(connection, reason: .useAnotherServer)
    }

    public func sessionsExpired(_ events: [LedgerEvent]) {
        for event in events { services.sessionEnded(event.sessionName) }
    }

    /// The broker's queue for `name` overflowed (`limits.queueOverflow: endSession`): the
    /// session ends as Event Grid ends it. The ledger records it (`disconnected(sessionOverflow)`
    /// for a connected session's connection, then `expired(sessionOverflow)`); a connected
    /// client gets v5 DISCONNECT 0x97 Quota exceeded (3.1.1: the connection closes); once it
    /// is gone, the session's pub/sub state is dropped. Returns the ledger's events (none when
    /// the session was no longer live: ended meanwhile, or taken by a clean start).
    @discardableResult
    public func endOverflowedSession(_ name: SessionName) async -> [LedgerEvent] {
        let events: [LedgerEvent]
        do {
            events = try await services.ledger.endSession(name, reason: .sessionOverflow)
        } catch {
            services.logger.error("session overflow not recorded", metadata: ["session_name": "\(name)", "error": "\(error)"])
            return []
        }
        for event in events where event.kind == .disconnected(.sessionOverflow) {
            if let gone = services.registry.sessionOverflowed(event.connection) { try? await gone.get() }
        }
        guard !events.isEmpty, let pubsub = services.pubsub else { return events }
        do {
            try await pubsub.endSession(name)
        } catch {
            services.logger.error("broker session end failed", metadata: ["session_name": "\(name)", "error": "\(error)"])
        }
        return events
    }

    /// Connections holding a session (or claiming one) right now.
    public var connectionCount: Int { services.registry.count }

    /// Puts `authority` in force for new CONNECTs and decides every connection's identity
    /// again with it: those it no longer accepts (a client disabled or removed, a password
    /// changed) are disconnected (v5: DISCONNECT 0x87), recorded as
    /// `disconnected(clientAuthenticationError)`; the others are left alone. Returns how
    /// many connections were disconnected.
    @discardableResult
    public func replaceAuthority(_ authority: any IdentityAuthority) async -> Int {
        services.authority.replace(with: authority)
        var ended = 0
        for decided in services.registry.reauthorizeAll(authority) {
            if (try? await decided.get()) == true { ended += 1 }
        }
        return ended
    }

    /// Puts `access` in force for new CONNECTs and decides every connection's permissions
    /// again with it: each session loses the subscriptions no longer allowed (logged and
    /// counted); connections stay up. Returns how many subscriptions were removed.
    @discardableResult
    public func replaceAccess(_ access: any AccessControl) async -> Int {
        services.access.replace(with: access)
        var removed = 0
        for revoked in services.registry.reaccessAll(access) {
            removed += (try? await revoked.get()) ?? 0
        }
        return removed
    }

    /// Puts the limits of `configuration` (its `limits:`, timeouts and announced maxima) in
    /// force for the connections made from now on; open connections keep theirs. Listeners
    /// and event-loop threads stay as they started.
    public func replaceLimits(_ configuration: MQTTFrontConfiguration) {
        services.replaceTunables(with: configuration)
    }

    /// Stops listening, ends every connection (v5: DISCONNECT 0x8B) and records every end in
    /// the ledger in ONE commit (`disconnected(serverInitiatedDisconnect)`, one timestamp),
    /// waiting up to `grace` for that; then stops the event loops. Returns how many ends
    /// went in that commit (a connection whose CONNECT was still being decided records its
    /// end on its own, once its claim comes back).
    @discardableResult
    public func shutdown(grace: TimeAmount = .seconds(5)) async -> Int {
        services.shutdownBatch.begin()
        await closeListeners()
        let loop = group.next()
        let (asked, finished) = services.registry.shutdownAllAsked()
        try? await EventLoopFuture.andAllComplete(asked, on: loop).get()
        let batched = services.shutdownBatch.flush(to: services.ledger)
        let all = EventLoopFuture.andAllComplete(finished, on: loop)
        let timeout = loop.makePromise(of: Void.self)
        let timer = loop.scheduleTask(in: grace) { timeout.succeed() }
        all.cascade(to: timeout)
        try? await timeout.futureResult.get()
        timer.cancel()
        try? await group.shutdownGracefully()
        #if os(Linux)
        for loop in epoll.withLock({ $0.loops }) { try? await loop.shutdownGracefully() }
        #endif
        return batched
    }

    private func closeListeners() async {
        let channels = servers.withLock { channels in
            defer { channels.removeAll() }
            return channels
        }
        for channel in channels { try? await channel.close() }
        #if os(Linux)
        let listeners = epoll.withLock { epoll in
            defer { epoll.listeners.removeAll() }
            return epoll.listeners
        }
        for listener in listeners { await listener.close() }
        #endif
    }
}
