#if os(Linux)
import CustodyTesting
import Glibc
import Logging
import NIOCore
import Testing

@testable import EpollTransport

// The plain-TCP listener and its byte streams, over 127.0.0.1, with no protocol on top.

/// Sends back whatever it reads, whole lines only (a partial line waits for the rest), and
/// closes after flushing when it reads "bye\n".
private final class LineEcho: RawConnection {
    override func received(_ buffer: inout ByteBuffer) {
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer.readSlice(length: newline - buffer.readerIndex + 1)!
            appendOutbound { $0.writeImmutableBuffer(line) }
            if line.readableBytesView.elementsEqual("bye\n".utf8) {
                closeAfterFlush()
                return
            }
        }
        flush()
    }
}

/// A blocking client socket connected to 127.0.0.1:`port`, with a 5 s receive timeout.
private func connectedClient(port: Int) throws -> Int32 {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw RawSocketError("connect", errno: errno) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return descriptor
}

/// Everything the peer sends until it closes (or 5 s pass).
private func readUntilClosed(_ descriptor: Int32) -> String {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = read(descriptor, &chunk, chunk.count)
        guard count > 0 else { break }
        bytes += chunk[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The client side: sends what it was given once TCP is up (appended before that), keeps what
/// comes back, and reports how it ended.
private final class LineClient: RawConnection {
    let heard = Recorder<String>()
    let ended = Recorder<String>()
    override func started(remoteAddress: String?) { flush() }
    override func received(_ buffer: inout ByteBuffer) {
        heard.append(buffer.readString(length: buffer.readableBytes) ?? "")
    }
    override func closed(error: RawSocketError?) { ended.append(error.map { "error \($0.code)" } ?? "closed") }
}

/// 127.0.0.1:`port` as a sockaddr_in, for `RawConnection.connect(to:length:)`.
private func withLoopback<R>(port: Int, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return try withUnsafePointer(to: &address) {
        try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// Greets with two lines written in one turn and flushed with `flushSoon` only, then closes
/// after flushing when it reads "bye\n".
private final class SoonGreeter: RawConnection {
    var closes: Recorder<String>?
    override func started(remoteAddress: String?) {
        appendOutbound { $0.writeString("hello\n") }
        flushSoon()
        appendOutbound { $0.writeString("again\n") }
        flushSoon()
    }
    override func received(_ buffer: inout ByteBuffer) {
        if buffer.readableBytesView.elementsEqual("bye\n".utf8) {
            appendOutbound { $0.writeString("gone\n") }
            flushSoon()  // and closed in the same turn: the close is heard once
            closeAfterFlush()
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
    }
    override func closed(error: RawSocketError?) { closes?.append(error.map { "\($0)" } ?? "closed") }
}

@Suite("Raw TCP listener and byte streams")
struct RawTCPTests {
    @Test func whatFlushSoonAskedForGoesOutAfterTheTurnAndACloseIsHeardOnce() async throws {
        let loop = try EpollEventLoop(name: "test-soon")
        let closes = Recorder<String>()
        let listener = try RawTCPListener(host: "127.0.0.1", port: 0, loops: [loop], logger: Logger(label: "test")) {
            let greeter = SoonGreeter(descriptor: $0, loop: $1)
            greeter.closes = closes
            return greeter
        }
        let port = listener.port
        let heard = try await offPool {
            let client = try connectedClient(port: port)
            defer { close(client) }
            usleep(50_000)
            _ = "bye\n".utf8CString.withUnsafeBytes { write(client, $0.baseAddress, 4) }
            return readUntilClosed(client)
        }
        #expect(heard == "hello\nagain\ngone\n")
        let deadline = NIODeadline.now() + .seconds(5)
        while closes.all.isEmpty, NIODeadline.now() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .milliseconds(50))
        #expect(closes.all == ["closed"])
        await listener.close()
        try await loop.shutdownGracefully()
    }

    @Test func aClientConnectionSendsWhatWasAppendedWhileConnectingAndHearsTheAnswer() async throws {
        let loop = try EpollEventLoop(name: "test-client")
        let listener = try RawTCPListener(host: "127.0.0.1", port: 0, loops: [loop], logger: Logger(label: "test")) {
            LineEcho(descriptor: $0, loop: $1)
        }
        let client = try await loop.submit { () -> LineClient in
            let client = LineClient(descriptor: try RawConnection.clientSocket(family: AF_INET), loop: loop)
            client.appendOutbound { $0.writeString("ping\n") }
            try withLoopback(port: listener.port) { try client.connect(to: $0, length: $1) }
            client.appendOutbound { $0.writeString("bye\n") }
            client.flush()  // still connecting: nothing goes out before TCP is up
            return client
        }.get()
        let deadline = NIODeadline.now() + .seconds(5)
        while client.ended.all.isEmpty && NIODeadline.now() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(client.heard.all.joined() == "ping\nbye\n")
        #expect(client.ended.all == ["closed"])
        await listener.close()
        try await loop.shutdownGracefully()
    }

    @Test func aRefusedConnectIsHeardAsAClosedConnectionWithItsError() async throws {
        let loop = try EpollEventLoop(name: "test-refused")
        let port = try freeLoopbackPort()  // nobody listens there
        let client = try await loop.submit { () -> LineClient in
            let client = LineClient(descriptor: try RawConnection.clientSocket(family: AF_INET), loop: loop)
            try withLoopback(port: port) { try client.connect(to: $0, length: $1) }
            return client
        }.get()
        let deadline = NIODeadline.now() + .seconds(5)
        while client.ended.all.isEmpty && NIODeadline.now() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(client.ended.all == ["error \(ECONNREFUSED)"])
        try await loop.shutdownGracefully()
    }

    @Test func bytesAcrossWritesComeBackAndCloseAfterFlush() async throws {
        let loop = try EpollEventLoop(name: "test-echo")
        let listener = try RawTCPListener(host: "127.0.0.1", port: 0, loops: [loop], logger: Logger(label: "test")) {
            LineEcho(descriptor: $0, loop: $1)
        }
        let port = listener.port
        // A blocking client, on a thread of its own: not on one of the pool's.
        let heard = try await offPool {
            let client = try connectedClient(port: port)
            defer { close(client) }
            for part in ["hel", "lo\nwor", "ld\nby", "e\n"] {
                _ = part.utf8CString.withUnsafeBytes { write(client, $0.baseAddress, part.utf8.count) }
                usleep(5_000)
            }
            return readUntilClosed(client)
        }
        #expect(heard == "hello\nworld\nbye\n")
        await listener.close()
        try await loop.shutdownGracefully()
    }

    /// Out of descriptors (EMFILE), the acceptor stops watching the listening socket for a
    /// moment, then accepts again. Stopped it must be: epoll refuses EPOLL_CTL_MOD on a
    /// descriptor added with EPOLLEXCLUSIVE, and a listener left watched makes the loop spin
    /// on accept4's EMFILE.
    @Test func aPausedAcceptorAcceptsNothingUntilItResumes() async throws {
        let loop = try EpollEventLoop(name: "test-pause")
        let accepted = Recorder<NIODeadline>()
        let listener = try RawTCPListener(host: "127.0.0.1", port: 0, loops: [loop], logger: Logger(label: "test")) {
            accepted.append(.now())
            return LineEcho(descriptor: $0, loop: $1)
        }
        let acceptor = listener.acceptors[0]
        let paused = try await loop.submit { () -> NIODeadline in
            acceptor.pause()
            return .now()
        }.get()
        // The kernel completes the handshake (the backlog); the loop must not take it yet.
        let client = try connectedClient(port: listener.port)
        defer { close(client) }
        let deadline = NIODeadline.now() + .seconds(5)
        while accepted.all.isEmpty && NIODeadline.now() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(accepted.all.count == 1)
        #expect(accepted.all.allSatisfy { $0 >= paused + RawAcceptor.pause })
        await listener.close()
        try await loop.shutdownGracefully()
    }
}
#endif
