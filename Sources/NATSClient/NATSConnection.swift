// A NATS client connection on SwiftNIO: publish (PUB/HPUB), subscribe (SUB/UNSUB), request/reply
// on one muxed inbox, PING/PONG flushes, and reconnect to the next known server with every
// subscription restored and what was published meanwhile sent.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public final class NATSConnection: @unchecked Sendable {
    public typealias Handler = @Sendable (NATSMessage) -> Void

    struct Subscription {
        var subject: String
        var queue: String?
        var handler: Handler
    }

    struct PendingRequest {
        var promise: EventLoopPromise<NATSMessage>
        var bytes: ByteBuffer
        var subject: String
        var deadline: NIODeadline
    }

    public let options: NATSOptions
    private let group: EventLoopGroup
    /// Every channel, promise and timer of the connection is on this one loop: a reply
    /// completes its request without a hop between threads.
    private let loop: EventLoop
    private let lock = NIOLock()
    // Everything below is guarded by `lock`.
    private var channel: Channel?
    private var generation = 0
    private var outbound: ByteBuffer
    private var flushScheduled = false
    private var subscriptions: [UInt64: Subscription] = [:]
    private var nextSID: UInt64 = 1
    private var requests: [String: PendingRequest] = [:]
    private var nextRequest: UInt64 = 0
    private var pongs: [EventLoopPromise<Void>] = []
    private var servers: [NATSServer]
    private var serverIndex = 0
    private var isClosed = false
    private var serverInfo: NATSServerInfo?
    private var reconnects = 0
    private var sweeper: RepeatedTask?
    private let inboxPrefix: String

    private init(options: NATSOptions, group: EventLoopGroup) {
        self.options = options
        self.group = group
        self.loop = group.next()
        self.servers = options.servers
        self.outbound = ByteBufferAllocator().buffer(capacity: 4096)
        self.inboxPrefix = "_INBOX.\(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(22))."
    }

    /// Connects to the first server of `options.servers` that answers (each tried once).
    public static func connect(_ options: NATSOptions, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton)
        async throws -> NATSConnection
    {
        guard !options.servers.isEmpty else { throw NATSError.noServer("no server given") }
        let connection = NATSConnection(options: options, group: group)
        // The inbox every request's reply comes to: one subscription for all of them.
        connection.lock.withLock {
            connection.subscriptions[0] = Subscription(subject: connection.inboxPrefix + "*", queue: nil) { [weak connection] in
                connection?.reply($0)
            }
        }
        // One timer for every request's timeout, rather than one per request.
        let sweeper = connection.loop.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(100)) {
            [weak connection] task in
            guard let connection else { return task.cancel() }
            connection.expireRequests()
        }
        connection.lock.withLock { connection.sweeper = sweeper }
        var problems: [String] = []
        for (index, server) in options.servers.enumerated() {
            do {
                try await connection.attach(server)
                connection.lock.withLock { connection.serverIndex = index }
                return connection
            } catch {
                problems.append("\(server): \(error)")
            }
        }
        sweeper.cancel()
        throw NATSError.noServer(problems.joined(separator: "; "))
    }

    /// Fails the requests whose deadline passed.
    private func expireRequests() {
        let now = NIODeadline.now()
        let expired = lock.withLock { () -> [PendingRequest] in
            let tokens = requests.filter { $0.value.deadline <= now }.map(\.key)
            return tokens.compactMap { requests.removeValue(forKey: $0) }
        }
        for request in expired { request.promise.fail(NATSError.timeout(subject: request.subject)) }
    }

    /// The server now connected, and what its INFO said.
    public var info: NATSServerInfo? { lock.withLock { serverInfo } }
    public var connectedServer: NATSServer? { lock.withLock { channel == nil ? nil : servers[serverIndex] } }
    /// Servers known: the given ones and those INFO's connect_urls added.
    public var knownServers: [NATSServer] { lock.withLock { servers } }
    /// How many times the connection was re-established after a loss.
    public var reconnectCount: Int { lock.withLock { reconnects } }
    public var isConnected: Bool { lock.withLock { channel != nil } }
    /// A loop of the connection's group, for timers of its users.
    public var eventLoop: EventLoop { loop }

    // MARK: - Publishing and subscribing

    /// PUB (HPUB with headers). Buffered while reconnecting; throws past `pendingLimit` then.
    public func publish(_ subject: String, payload: ByteBuffer, headers: NATSHeaders? = nil, replyTo: String? = nil) throws {
        var buffer = ByteBufferAllocator().buffer(capacity: payload.readableBytes + subject.utf8.count + 64)
        Self.writePublish(subject, payload: payload, headers: headers, replyTo: replyTo, into: &buffer)
        try send(buffer)
    }

    /// SUB; `handler` runs on the connection's event loop, in the server's order: keep it quick.
    @discardableResult
    public func subscribe(_ subject: String, queue: String? = nil, handler: @escaping Handler) throws -> UInt64 {
        let sid = lock.withLock { () -> UInt64 in
            let sid = nextSID
            nextSID += 1
            subscriptions[sid] = Subscription(subject: subject, queue: queue, handler: handler)
            return sid
        }
        var buffer = ByteBufferAllocator().buffer(capacity: subject.utf8.count + 32)
        Self.writeSubscribe(subject, queue: queue, sid: sid, into: &buffer)
        try send(buffer)
        return sid
    }

    public func unsubscribe(_ sid: UInt64) throws {
        guard lock.withLock({ subscriptions.removeValue(forKey: sid) }) != nil else { return }
        try send(ByteBuffer(string: "UNSUB \(sid)\r\n"))
    }

    /// Publishes with a reply subject on the connection's inbox and waits for the first reply.
    /// Sent again after a reconnect; a 503 status (no responders) throws `.noResponders`.
    public func request(_ subject: String, payload: ByteBuffer, headers: NATSHeaders? = nil, timeout: TimeAmount? = nil)
        async throws -> NATSMessage
    {
        try await requestFuture(subject, payload: payload, headers: headers, timeout: timeout).get()
    }

    /// `request`, sent before it returns (so that requests keep the caller's order), answered
    /// by the future.
    public func requestFuture(_ subject: String, payload: ByteBuffer, headers: NATSHeaders? = nil, timeout: TimeAmount? = nil)
        -> EventLoopFuture<NATSMessage>
    {
        let promise = loop.makePromise(of: NATSMessage.self)
        var buffer = ByteBufferAllocator().buffer(capacity: payload.readableBytes + subject.utf8.count + 96)
        let token = lock.withLock { () -> String in
            nextRequest += 1
            return String(nextRequest)
        }
        Self.writePublish(subject, payload: payload, headers: headers, replyTo: inboxPrefix + token, into: &buffer)
        let deadline = NIODeadline.now() + (timeout ?? options.requestTimeout)
        lock.withLock { requests[token] = PendingRequest(promise: promise, bytes: buffer, subject: subject, deadline: deadline) }
        do {
            try send(buffer)
        } catch {
            lock.withLock { _ = requests.removeValue(forKey: token) }
            promise.fail(error)
        }
        return promise.futureResult.flatMapThrowing { message in
            if message.headers?.status == 503 { throw NATSError.noResponders(subject: subject) }
            return message
        }
    }

    private func reply(_ message: NATSMessage) {
        guard message.subject.hasPrefix(inboxPrefix) else { return }
        let token = String(message.subject.dropFirst(inboxPrefix.count))
        lock.withLock { requests.removeValue(forKey: token) }?.promise.succeed(message)
    }

    /// A subject on this connection's own inbox space, for replies that are not requests (a pull).
    public func newInbox() -> String { inboxPrefix + "x" + UUID().uuidString.replacingOccurrences(of: "-", with: "") }

    /// PING, answered by PONG once the server has processed everything sent before it.
    public func flush(timeout: TimeAmount = .seconds(5)) async throws {
        let promise = loop.makePromise(of: Void.self)
        let sent = lock.withLock { () -> Bool in
            guard channel != nil, !isClosed else { return false }
            pongs.append(promise)
            return true
        }
        guard sent else { throw isClosed ? NATSError.closed : NATSError.connectionLost }
        try send(ByteBuffer(string: "PING\r\n"))
        let timer = loop.scheduleTask(in: timeout) { promise.fail(NATSError.timeout(subject: "PING")) }
        defer { timer.cancel() }
        try await promise.futureResult.get()
    }

    /// Closes for good: pending requests and flushes fail with `.closed`.
    public func close() async {
        let (channel, requests, pongs) = lock.withLock { () -> (Channel?, [PendingRequest], [EventLoopPromise<Void>]) in
            isClosed = true
            sweeper?.cancel()
            defer {
                self.channel = nil
                self.requests = [:]
                self.pongs = []
            }
            return (self.channel, Array(self.requests.values), self.pongs)
        }
        for request in requests { request.promise.fail(NATSError.closed) }
        for pong in pongs { pong.fail(NATSError.closed) }
        try? await channel?.close()
    }

    // MARK: - Writing

    private func send(_ bytes: ByteBuffer) throws {
        var bytes = bytes
        let target = try lock.withLock { () throws -> Channel? in
            guard !isClosed else { throw NATSError.closed }
            if channel == nil, outbound.readableBytes + bytes.readableBytes > options.pendingLimit { throw NATSError.pendingLimit }
            outbound.writeBuffer(&bytes)
            guard let channel, !flushScheduled else { return nil }
            flushScheduled = true
            return channel
        }
        // Every write queued until the loop runs goes out in one flush.
        target?.eventLoop.execute { self.writeOutbound(to: target!) }
    }

    private func writeOutbound(to channel: Channel) {
        let data = lock.withLock { () -> ByteBuffer? in
            flushScheduled = false
            guard self.channel === channel, outbound.readableBytes > 0 else { return nil }
            let data = outbound
            outbound = ByteBufferAllocator().buffer(capacity: 4096)
            return data
        }
        if let data { channel.writeAndFlush(data, promise: nil) }
    }

    static func writePublish(_ subject: String, payload: ByteBuffer, headers: NATSHeaders?, replyTo: String?, into buffer: inout ByteBuffer) {
        let reply = replyTo.map { " " + $0 } ?? ""
        if let headers {
            var block = ByteBufferAllocator().buffer(capacity: 64)
            headers.write(into: &block)
            buffer.writeString("HPUB \(subject)\(reply) \(block.readableBytes) \(block.readableBytes + payload.readableBytes)\r\n")
            buffer.writeImmutableBuffer(block)
        } else {
            buffer.writeString("PUB \(subject)\(reply) \(payload.readableBytes)\r\n")
        }
        buffer.writeImmutableBuffer(payload)
        buffer.writeString("\r\n")
    }

    static func writeSubscribe(_ subject: String, queue: String?, sid: UInt64, into buffer: inout ByteBuffer) {
        buffer.writeString("SUB \(subject)\(queue.map { " " + $0 } ?? "") \(sid)\r\n")
    }

    // MARK: - Connecting

    /// One connection to `server`: INFO, CONNECT, PING, PONG; then it carries the subscriptions,
    /// the pending requests and whatever was buffered.
    private func attach(_ server: NATSServer) async throws {
        let handshake = Handshake(loop: loop)
        // Whatever happens, its promises end (completing one twice does nothing).
        defer { handshake.fail(NATSError.connectionLost) }
        let generation = lock.withLock { () -> Int in
            self.generation += 1
            return self.generation
        }
        let channel = try await ClientBootstrap(group: handshake.loop)
            .connectTimeout(options.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(NATSFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(
                        NATSInboundHandler(connection: self, handshake: handshake, generation: generation))
                }
            }
            .connect(host: server.host, port: server.port).get()
        let timeout = handshake.loop.scheduleTask(in: options.connectTimeout) {
            handshake.fail(NATSError.timeout(subject: "CONNECT to \(server)"))
        }
        defer { timeout.cancel() }
        do {
            let infoBytes = try await handshake.info.futureResult.get()
            let info = try JSONDecoder().decode(NATSServerInfo.self, from: Data(infoBytes.readableBytesView))
            let connect = ConnectOptions(name: options.name, noEcho: options.noEcho)
            var hello = ByteBuffer(string: "CONNECT ")
            hello.writeBytes(try JSONEncoder().encode(connect))
            hello.writeString("\r\nPING\r\n")
            try await channel.writeAndFlush(hello)
            try await handshake.pong.futureResult.get()
            learn(info)
            // Subscriptions first, then requests again, then what waited.
            let ready = try lock.withLock { () throws -> ByteBuffer in
                guard !isClosed else { throw NATSError.closed }
                var first = ByteBufferAllocator().buffer(capacity: 1024)
                for (sid, subscription) in subscriptions.sorted(by: { $0.key < $1.key }) {
                    Self.writeSubscribe(subscription.subject, queue: subscription.queue, sid: sid, into: &first)
                }
                for request in requests.values { first.writeImmutableBuffer(request.bytes) }
                first.writeBuffer(&outbound)
                outbound = ByteBufferAllocator().buffer(capacity: 4096)
                flushScheduled = false
                serverInfo = info
                self.channel = channel
                return first
            }
            try await channel.writeAndFlush(ready)
        } catch {
            try? await channel.close()
            throw error
        }
    }

    /// INFO's connect_urls: servers of the same cluster, tried after the known ones.
    func learn(_ info: NATSServerInfo) {
        lock.withLock {
            for url in info.connectURLs ?? [] {
                if let server = NATSServer(url: url), !servers.contains(server) { servers.append(server) }
            }
        }
    }

    func learn(infoBytes: ByteBuffer) {
        if let info = try? JSONDecoder().decode(NATSServerInfo.self, from: Data(infoBytes.readableBytesView)) { learn(info) }
    }

    func deliver(_ message: NATSMessage) {
        guard let handler = lock.withLock({ subscriptions[message.sid]?.handler }) else { return }
        handler(message)
    }

    func pong() {
        let waiter = lock.withLock { pongs.isEmpty ? nil : pongs.removeFirst() }
        waiter?.succeed()
    }

    /// The channel of `generation` closed: unless closed on purpose, reconnect to the next server.
    func lost(generation: Int) {
        let (current, pongs) = lock.withLock { () -> (Bool, [EventLoopPromise<Void>]) in
            guard generation == self.generation, channel != nil, !isClosed else { return (false, []) }
            channel = nil
            defer { self.pongs = [] }
            return (true, self.pongs)
        }
        for pong in pongs { pong.fail(NATSError.connectionLost) }
        guard current else { return }
        Task { await self.reconnect() }
    }

    private func reconnect() async {
        while true {
            let (candidates, start, closed) = lock.withLock { (servers, serverIndex, isClosed) }
            if closed { return }
            for offset in 1...candidates.count {
                let index = (start + offset) % candidates.count
                do {
                    try await attach(candidates[index])
                    lock.withLock {
                        serverIndex = index
                        reconnects += 1
                    }
                    return
                } catch {
                    if lock.withLock({ isClosed }) { return }
                }
            }
            try? await Task.sleep(nanoseconds: UInt64(options.reconnectWait.nanoseconds))
        }
    }
}

/// CONNECT's fields.
struct ConnectOptions: Encodable {
    var verbose = false
    var pedantic = false
    var tls_required = false
    var name: String
    var lang = "swift"
    var version = "0.1.0"
    var `protocol` = 1
    var echo: Bool
    var headers = true
    var no_responders = true

    init(name: String, noEcho: Bool) {
        self.name = name
        self.echo = !noEcho
    }
}

/// What one connect attempt waits for.
final class Handshake: Sendable {
    let loop: EventLoop
    let info: EventLoopPromise<ByteBuffer>
    let pong: EventLoopPromise<Void>

    init(loop: EventLoop) {
        self.loop = loop
        info = loop.makePromise()
        pong = loop.makePromise()
    }

    func fail(_ error: Error) {
        info.fail(error)
        pong.fail(error)
    }
}
