#if os(Linux)
import CustodyModel
import CEpoll
import Glibc
import Logging
import MQTTCodec
import NIOCore

/// Plain-TCP listeners on `EpollEventLoop`s: a listening socket watched by every loop
/// (EPOLLEXCLUSIVE: one loop wakes per connection), each accepted connection a
/// `RawConnection` on the loop that accepted it.
final class RawTCPListener: @unchecked Sendable {
    let descriptor: Int32
    let port: Int
    private let loops: [EpollEventLoop]

    /// Binds and listens; the loops start accepting at once.
    init(address: HostPort, loops: [EpollEventLoop], services: FrontServices) throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var found: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(address.host, String(address.port), &hints, &found)
        guard status == 0, let first = found else {
            throw RawSocketError("cannot resolve \(address.host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(found) }
        let descriptor = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw RawSocketError("socket", errno: errno) }
        var one: Int32 = 1
        _ = setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(descriptor, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            let error = RawSocketError("bind", errno: errno)
            Glibc.close(descriptor)
            throw error
        }
        guard listen(descriptor, 1024) == 0 else {
            let error = RawSocketError("listen", errno: errno)
            Glibc.close(descriptor)
            throw error
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        self.descriptor = descriptor
        self.port = RawSocketAddress.port(of: storage)
        self.loops = loops
        for loop in loops {
            let acceptor = RawAcceptor(descriptor: descriptor, loop: loop, services: services)
            let watched = loop.submit {
                try loop.watch(descriptor, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue, acceptor)
            }
            do {
                try watched.wait()
            } catch {
                for loop in loops { try? loop.submit { loop.unwatch(descriptor) }.wait() }
                Glibc.close(descriptor)
                throw error
            }
        }
    }

    /// Stops accepting: every loop forgets the socket, then it is closed.
    func close() async {
        let descriptor = self.descriptor
        for loop in loops {
            try? await loop.submit { loop.unwatch(descriptor) }.get()
        }
        Glibc.close(descriptor)
    }
}

/// A system call of the plain-TCP front failed: `bind: Address already in use (errno 98)`.
struct RawSocketError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }

    init(_ call: String, errno code: Int32) {
        self.description = "\(call): \(String(cString: strerror(code))) (errno \(code))"
    }
}

/// One loop's side of a listening socket.
private final class RawAcceptor: EpollReadiness, @unchecked Sendable {
    let descriptor: Int32
    unowned let loop: EpollEventLoop
    let services: FrontServices

    init(descriptor: Int32, loop: EpollEventLoop, services: FrontServices) {
        self.descriptor = descriptor
        self.loop = loop
        self.services = services
    }

    func ready(_ events: UInt32) {
        // At most 64 at a time, so that the connections already here get their turn.
        for _ in 0..<64 {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let accepted = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    cepoll_accept4(descriptor, $0, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
                }
            }
            if accepted < 0 {
                let code = errno
                switch code {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of descriptors or memory: stop accepting for a moment instead of spinning.
                    services.logger.warning("accept failed", metadata: ["error": "\(RawSocketError("accept4", errno: code))"])
                    pause()
                    return
                default:
                    services.logger.warning("accept failed", metadata: ["error": "\(RawSocketError("accept4", errno: code))"])
                    return
                }
            }
            var one: Int32 = 1
            _ = setsockopt(accepted, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let connection = RawConnection(descriptor: accepted, loop: loop, services: services)
            do {
                try loop.watch(accepted, events: RawConnection.readEvents, connection)
            } catch {
                services.logger.warning("accept failed", metadata: ["error": "\(error)"])
                Glibc.close(accepted)
                continue
            }
            connection.start(remoteAddress: RawSocketAddress.text(of: storage))
        }
    }

    private func pause() {
        loop.change(descriptor, events: 0)
        let descriptor = self.descriptor
        _ = loop.scheduleTask(in: .milliseconds(100)) { [loop] in
            loop.change(descriptor, events: EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue)
        }
    }
}

/// One MQTT connection over a bare non-blocking socket: reads, frames and decodes the
/// client's packets for its `MQTTConnection`, encodes and writes the answers. On its loop only.
final class RawConnection: EpollReadiness, ConnectionIO {
    static let readEvents = EPOLLIN.rawValue | EPOLLRDHUP.rawValue

    // Ordered so that the small fields pack together: a held connection keeps this object.
    private unowned let loop: EpollEventLoop
    private let connection: MQTTConnection
    private var decoder: MQTTDecoder
    /// An incomplete packet's bytes, between reads.
    private var inbound: ByteBuffer?
    /// Bytes written but not yet taken by the socket.
    private var outbound: ByteBuffer?
    private let descriptor: Int32
    /// The errno a read or send failed with (reported with the close); 0: none.
    private var failure: Int32 = 0
    /// The client's v5 Maximum Packet Size (MQTT-3.1.2-24); 0: none.
    private var maximumPacketSize: UInt32 = 0
    private var encoder = MQTTEncoder(protocolVersion: .mqtt3_1_1)
    private var isClosed = false
    /// The connection asked to stop reading (its broker or claim is behind).
    private var readHeld = false
    /// After a decoding failure the stream cannot be resynchronised: bytes are dropped.
    private var decodingFailed = false
    /// `close(sending:)` was asked: close once `outbound` is written.
    private var closeWhenWritten = false
    /// Whether EPOLLOUT is asked for.
    private var watchingWrites = false

    init(descriptor: Int32, loop: EpollEventLoop, services: FrontServices) {
        self.descriptor = descriptor
        self.loop = loop
        self.decoder = MQTTDecoder(maximumPacketSize: services.maximumPacketSize)
        self.connection = MQTTConnection(services: services, eventLoop: loop)
        connection.attach(self)
    }

    fileprivate func start(remoteAddress: String?) {
        connection.start(remoteAddress: remoteAddress)
    }

    // MARK: Readiness

    func ready(_ events: UInt32) {
        if events & EPOLLOUT.rawValue != 0 { writePending() }
        guard !isClosed, !readHeld, !closeWhenWritten else { return }
        if events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 {
            readAvailable(peerClosing: events & (EPOLLRDHUP.rawValue | EPOLLHUP.rawValue) != 0)
        }
    }

    private func readAvailable(peerClosing: Bool) {
        let scratch = loop.readScratch
        for _ in 0..<16 {
            let count = Glibc.read(descriptor, scratch.baseAddress, scratch.count)
            if count > 0 {
                received(UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
                if isClosed || readHeld || closeWhenWritten { return }
                if count < scratch.count && !peerClosing { return }
            } else if count == 0 {
                // The client closed its side: whatever it sent has been handed on.
                closeNow(failure: 0)
                return
            } else {
                switch errno {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR: continue
                default:
                    closeNow(failure: errno)
                    return
                }
            }
        }
    }

    private func received(_ bytes: UnsafeRawBufferPointer) {
        guard !decodingFailed else { return }
        let metrics = connection.services.metrics
        // A read that is exactly a DISCONNECT or PINGREQ without a body (a clean end, a
        // keep-alive): no buffer, no decoding.
        if inbound == nil, decoder.protocolVersion != nil, let packet = Self.bodilessPacket(bytes) {
            metrics?.bytesReceived.increment(by: 2)
            connection.process(.packet(packet))
            if !connection.mayRead { holdReads() }
            return
        }
        // Packets keep slices of the buffer they were decoded from (payloads): each read gets
        // a buffer of its own, the size of what was read.
        var buffer: ByteBuffer
        if var pending = inbound {
            inbound = nil
            pending.writeBytes(bytes)
            buffer = pending
        } else {
            buffer = loop.allocator.buffer(bytes: bytes)
        }
        while !isClosed {
            let before = buffer.readerIndex
            switch decoder.decode(&buffer) {
            case .needMoreData:
                if buffer.readableBytes > 0 {
                    buffer.discardReadBytes()
                    inbound = buffer
                }
                if !connection.mayRead { holdReads() }
                return
            case .packet(let packet):
                if let metrics {
                    metrics.bytesReceived.increment(by: buffer.readerIndex - before)
                    if case .publish(let publish) = packet { metrics.messagesReceived[Int(publish.qos.rawValue)].increment() }
                }
                connection.process(.packet(packet))
            case .failure(let error):
                decodingFailed = true
                connection.process(.failure(error))
                return
            }
        }
    }

    /// The packet `bytes` are when they are exactly `E0 00` (DISCONNECT, normal) or `C0 00`
    /// (PINGREQ), as the decoder would read them in either version; nil otherwise.
    static func bodilessPacket(_ bytes: UnsafeRawBufferPointer) -> MQTTPacket? {
        guard bytes.count == 2, bytes[1] == 0 else { return nil }
        switch bytes[0] {
        case 0xE0: return .disconnect(MQTTDisconnect())
        case 0xC0: return .pingreq
        default: return nil
        }
    }

    private func holdReads() {
        guard !readHeld, !isClosed else { return }
        readHeld = true
        updateInterest()
    }

    private func updateInterest() {
        guard !isClosed else { return }
        // Held: edge-triggered with nothing asked, so that a peer's close does not spin the
        // loop; level-triggered reads resume with `resumeReading`.
        var events: UInt32 = readHeld || closeWhenWritten ? EPOLLET.rawValue : Self.readEvents
        if watchingWrites { events |= EPOLLOUT.rawValue }
        loop.change(descriptor, events: events)
    }

    // MARK: ConnectionIO

    func write(_ packet: MQTTPacket) {
        guard !isClosed else { return }
        let services = connection.services
        do {
            if maximumPacketSize > 0, try encoder.encodedSize(of: packet) > Int(maximumPacketSize) { return }
            if outbound == nil { outbound = loop.allocator.buffer(capacity: 64) }
            let before = outbound!.writerIndex
            try encoder.encode(packet, into: &outbound!)
            let size = outbound!.writerIndex - before
            if let metrics = services.metrics {
                metrics.bytesSent.increment(by: size)
                if case .publish(let publish) = packet { metrics.messagesSent[Int(publish.qos.rawValue)].increment() }
            }
            if services.logger.logLevel <= .debug {
                services.logger.debug("packet sent", metadata: [
                    "packet_type": "\(packet.type)", "bytes": "\(size)", "remote_address": "\(connection.remoteAddressText)",
                ])
            }
        } catch {
            services.logger.error("packet encoding failed", metadata: ["packet_type": "\(packet.type)", "error": "\(error)"])
        }
    }

    func flush() {
        guard !watchingWrites else { return }  // the socket is full: EPOLLOUT will write
        writePending()
    }

    func close(sending packets: [MQTTPacket]) {
        guard !isClosed else { return }
        for packet in packets { write(packet) }
        closeWhenWritten = true
        writePending()
        guard !isClosed else { return }
        updateInterest()
        // The socket is full: a client that does not read must not keep it (nor hold up the
        // takeover of its session) for ever. Closed anyway after the grace.
        let bound = NIOLoopBound(self, eventLoop: loop)
        _ = loop.scheduleTask(in: connection.services.closeGrace) { bound.value.closeNow(failure: 0) }
    }

    func resumeReading() {
        guard readHeld, !isClosed else { return }
        readHeld = false
        updateInterest()
    }

    func setProtocolVersion(_ version: MQTTProtocolVersion) {
        encoder.protocolVersion = version
    }

    func setMaximumPacketSize(_ size: Int?) {
        maximumPacketSize = size.map { UInt32(clamping: $0) } ?? 0
    }

    var channel: (any Channel)? { nil }

    // MARK: Writing and closing

    private func writePending() {
        guard !isClosed else { return }
        while var pending = outbound, pending.readableBytes > 0 {
            let count = pending.withUnsafeReadableBytes { bytes in
                send(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            }
            if count >= 0 {
                pending.moveReaderIndex(forwardBy: count)
                outbound = pending.readableBytes > 0 ? pending : nil
                continue
            }
            switch errno {
            case EINTR:
                continue
            case EAGAIN, EWOULDBLOCK:
                if !watchingWrites {
                    watchingWrites = true
                    updateInterest()
                }
                return
            default:
                closeNow(failure: errno)
                return
            }
        }
        outbound = nil
        if watchingWrites {
            watchingWrites = false
            updateInterest()
        }
        if closeWhenWritten { closeNow(failure: 0) }
    }

    /// Closes the socket; the connection hears of it after the current event (never from
    /// inside its own call into this transport).
    private func closeNow(failure: Int32) {
        guard !isClosed else { return }
        isClosed = true
        self.failure = failure
        inbound = nil
        outbound = nil
        loop.closeWatched(descriptor)
        loop.afterEvents(self)
    }

    func afterEvents() {
        if failure != 0 {
            connection.failed(RawSocketError("socket", errno: failure))
            failure = 0
        }
        connection.inactive()
    }
}

/// Socket addresses as log lines and ledger events write them: `IP:port`, `[IPv6]:port`.
enum RawSocketAddress {
    static func port(of storage: sockaddr_storage) -> Int {
        let family = Int32(storage.ss_family)
        return withUnsafePointer(to: storage) { pointer in
            switch family {
            case AF_INET:
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6:
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default:
                0
            }
        }
    }

    static func text(of storage: sockaddr_storage) -> String? {
        let family = Int32(storage.ss_family)
        func ip(_ address: UnsafeRawPointer) -> String? {
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { text in
                guard inet_ntop(family, address, text.baseAddress, socklen_t(text.count)) != nil else { return nil }
                return String(cString: text.baseAddress!)
            }
        }
        return withUnsafePointer(to: storage) { pointer -> String? in
            switch family {
            case AF_INET:
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address -> String? in
                    var raw = address.pointee.sin_addr
                    guard let ip = ip(&raw) else { return nil }
                    return "\(ip):\(UInt16(bigEndian: address.pointee.sin_port))"
                }
            case AF_INET6:
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address -> String? in
                    var raw = address.pointee.sin6_addr
                    guard let ip = ip(&raw) else { return nil }
                    return "[\(ip)]:\(UInt16(bigEndian: address.pointee.sin6_port))"
                }
            default:
                return nil
            }
        }
    }
}
#endif
