#if os(Linux)
import CEpoll
import Glibc
import Logging
import NIOCore

/// A listening TCP socket watched by every loop given (EPOLLEXCLUSIVE: one loop wakes per
/// connection); each accepted connection is a `RawConnection` on the loop that accepted it,
/// made by the listener's owner.
public final class RawTCPListener: @unchecked Sendable {
    /// Makes the connection of an accepted socket (on `loop`): a `RawConnection` subclass
    /// that speaks the protocol.
    public typealias MakeConnection = @Sendable (_ descriptor: Int32, _ loop: EpollEventLoop) -> RawConnection

    public let descriptor: Int32
    public let port: Int
    let acceptors: [RawAcceptor]

    /// Binds `host`:`port` (0: any free port) and listens; the loops start accepting at once.
    public init(
        host: String, port: Int, loops: [EpollEventLoop], logger: Logger, connection makeConnection: @escaping MakeConnection
    ) throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var found: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &found)
        guard status == 0, let first = found else {
            throw RawSocketError("cannot resolve \(host): \(String(cString: gai_strerror(status)))")
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
        self.acceptors = loops.map {
            RawAcceptor(descriptor: descriptor, loop: $0, logger: logger, makeConnection: makeConnection)
        }
        for acceptor in acceptors {
            do {
                try acceptor.loop.submit { try acceptor.start() }.wait()
            } catch {
                for acceptor in acceptors { try? acceptor.loop.submit { acceptor.stop() }.wait() }
                Glibc.close(descriptor)
                throw error
            }
        }
    }

    /// Stops accepting: every loop forgets the socket, then it is closed.
    public func close() async {
        for acceptor in acceptors {
            try? await acceptor.loop.submit { acceptor.stop() }.get()
        }
        Glibc.close(descriptor)
    }
}

/// One loop's side of a listening socket.
final class RawAcceptor: EpollReadiness, @unchecked Sendable {
    private static let events = EPOLLIN.rawValue | EPOLLEXCLUSIVE.rawValue
    /// How long accepting stops when the process is out of descriptors or memory.
    static let pause = TimeAmount.milliseconds(100)
    /// Descriptors accepting never takes: the rest of the process (libdispatch's worker
    /// monitor reads /proc and traps when it cannot, LMDB, logs, a reload's files) keeps them
    /// even when clients would take every descriptor (`--max-connections` above the limit).
    static let spareDescriptors: Int32 = 16
    /// Descriptors are numbered lowest free first: an accepted one at or above this leaves
    /// fewer than `spareDescriptors` free, and is closed at once. nil: no descriptor limit.
    static let descriptorCeiling: Int32? = {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        let descriptors = Int32(clamping: limit.rlim_cur)
        return max(descriptors - spareDescriptors, descriptors / 2)
    }()

    let descriptor: Int32
    unowned let loop: EpollEventLoop
    private let logger: Logger
    private let makeConnection: RawTCPListener.MakeConnection
    // Loop-only.
    private var watching = false
    private var stopped = false
    /// Pauses since accepting last succeeded: one line when they start, one when they end,
    /// instead of one every `pause` for as long as the process is out of descriptors.
    private var pausesInARow = 0

    init(descriptor: Int32, loop: EpollEventLoop, logger: Logger, makeConnection: @escaping RawTCPListener.MakeConnection) {
        self.descriptor = descriptor
        self.loop = loop
        self.logger = logger
        self.makeConnection = makeConnection
    }

    func start() throws {
        try loop.watch(descriptor, events: Self.events, self)
        watching = true
    }

    func stop() {
        stopped = true
        if watching { loop.unwatch(descriptor) }
        watching = false
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
            var failure: Int32? = accepted < 0 ? errno : nil
            if let ceiling = Self.descriptorCeiling, accepted >= ceiling {
                // Into the descriptors kept for the rest of the process: shed this one.
                Glibc.close(accepted)
                failure = EMFILE
            }
            if let code = failure {
                switch code {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    // Out of descriptors or memory: stop accepting for a moment instead of spinning.
                    if pausesInARow == 0 {
                        logger.warning("accept paused", metadata: [
                            "error": "\(RawSocketError("accept4", errno: code))",
                            "spare_descriptors": "\(Self.spareDescriptors)",
                            "retry_ms": "\(Self.pause.nanoseconds / 1_000_000)",
                        ])
                    }
                    pausesInARow += 1
                    pause()
                    return
                default:
                    logger.warning("accept failed", metadata: ["error": "\(RawSocketError("accept4", errno: code))"])
                    return
                }
            }
            if pausesInARow > 0 {
                logger.notice("accept resumed", metadata: ["pauses": "\(pausesInARow)"])
                pausesInARow = 0
            }
            var one: Int32 = 1
            _ = setsockopt(accepted, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let connection = makeConnection(accepted, loop)
            do {
                try connection.register(remoteAddress: RawSocketAddress.text(of: storage))
            } catch {
                logger.warning("accept failed", metadata: ["error": "\(error)"])
                Glibc.close(accepted)
            }
        }
    }

    /// Stops watching the socket for `RawAcceptor.pause`. Unwatched, not modified: epoll
    /// refuses EPOLL_CTL_MOD on a descriptor added with EPOLLEXCLUSIVE.
    func pause() {
        guard watching else { return }
        watching = false
        loop.unwatch(descriptor)
        _ = loop.scheduleTask(in: Self.pause) { [self] in resume() }
    }

    private func resume() {
        guard !stopped, !watching else { return }
        do {
            try start()
        } catch {
            logger.error("accepting again failed", metadata: ["error": "\(error)"])
            _ = loop.scheduleTask(in: Self.pause) { [self] in resume() }
        }
    }
}
#endif
