#if os(Linux)
import CEpoll
import Glibc
import NIOCore

/// A byte stream over a bare non-blocking socket on an `EpollEventLoop`: reads into the
/// loop's buffer and hands the bytes on, writes what it is given (MSG_NOSIGNAL; what the
/// socket does not take waits for EPOLLOUT), pauses reading on request, closes after its
/// writes are flushed. It knows no protocol: the protocol is a subclass, which overrides the
/// `open` methods. A subclass rather than a delegate so that a connection stays one object
/// (a held connection is this and its logic, nothing more). On its loop only.
open class RawConnection: EpollReadiness {
    public static let readEvents = EPOLLIN.rawValue | EPOLLRDHUP.rawValue

    // Ordered so that the small fields pack together: a held connection keeps this object.
    public unowned let loop: EpollEventLoop
    /// Bytes `received` left unread, until more come.
    private var inbound: ByteBuffer?
    /// Bytes written but not yet taken by the socket.
    private var outbound: ByteBuffer?
    public let descriptor: Int32
    /// The errno a read or send failed with (reported with the close); 0: none.
    private var failure: Int32 = 0
    private var isClosed = false
    private var readHeld = false
    /// `closeAfterFlush` was asked: close once `outbound` is written.
    private var closeWhenWritten = false
    /// Whether EPOLLOUT is asked for.
    private var watchingWrites = false
    /// `connect(to:)` is under way: EPOLLOUT will say how it ended.
    private var connecting = false
    /// `flushSoon` asked for a flush after the work at hand.
    private var flushScheduled = false
    /// Closed, and `closed(error:)` not heard yet.
    private var closePending = false

    public init(descriptor: Int32, loop: EpollEventLoop) {
        self.descriptor = descriptor
        self.loop = loop
    }

    // MARK: What a subclass hears

    /// The socket is watched: the connection is open (`remoteAddress`: `IP:port`).
    open func started(remoteAddress: String?) {}

    /// Bytes came: read what makes whole units; what is left unread is kept and handed back
    /// with the next bytes.
    open func received(_ buffer: inout ByteBuffer) {}

    /// Bytes came and nothing is kept from before: true when they were taken as they are
    /// (then no buffer is made for them).
    open func receivedInPlace(_ bytes: UnsafeRawBufferPointer) -> Bool { false }

    /// The socket is closed (by either side); `error`: the failed read or send, if any. Heard
    /// after the event at hand, never from inside a call into this connection.
    open func closed(error: RawSocketError?) {}

    /// Bytes that had to wait for the socket (more than it took at once) are all sent now.
    open func drained() {}

    // MARK: What a subclass does

    public var isOpen: Bool { !isClosed }

    /// Bytes appended and not yet taken by the socket.
    public var outboundBytes: Int { outbound?.readableBytes ?? 0 }

    /// Appends to what is to be sent; `flush` sends.
    public func appendOutbound(_ append: (inout ByteBuffer) -> Void) {
        assert(loop.inEventLoop, "RawConnection.appendOutbound off its loop")
        guard !isClosed else { return }
        if outbound == nil { outbound = loop.allocator.buffer(capacity: 64) }
        append(&outbound!)
    }

    /// Sends what was appended once the loop has handled the events, timers or tasks at hand,
    /// so that everything written in one turn of the loop goes out in one `send` (a broker's
    /// deliveries to one subscriber come one task each).
    public func flushSoon() {
        assert(loop.inEventLoop, "RawConnection.flushSoon off its loop")
        guard !flushScheduled, !isClosed else { return }
        flushScheduled = true
        loop.afterEvents(self)
    }

    public func flush() {
        assert(loop.inEventLoop, "RawConnection.flush off its loop")
        // The socket is full, or still connecting: EPOLLOUT will write.
        guard !watchingWrites, !connecting else { return }
        writePending()
    }

    /// Stops reading until `resumeReading` (what the socket holds stays there).
    public func pauseReading() {
        assert(loop.inEventLoop, "RawConnection.pauseReading off its loop")
        guard !readHeld, !isClosed else { return }
        readHeld = true
        updateInterest()
    }

    public func resumeReading() {
        assert(loop.inEventLoop, "RawConnection.resumeReading off its loop")
        guard readHeld, !isClosed else { return }
        readHeld = false
        updateInterest()
    }

    /// Reads no more and closes once everything written is sent. True when it is closed now.
    @discardableResult
    public func closeAfterFlush() -> Bool {
        assert(loop.inEventLoop, "RawConnection.closeAfterFlush off its loop")
        guard !isClosed else { return true }
        closeWhenWritten = true
        writePending()
        guard !isClosed else { return true }
        updateInterest()
        return false
    }

    /// Closes now; what is not sent is lost.
    public func close() {
        assert(loop.inEventLoop, "RawConnection.close off its loop")
        closeNow(failure: 0)
    }

    // MARK: Connecting (the client side)

    /// A non-blocking TCP socket for addresses of `family` (AF_INET, AF_INET6), with
    /// TCP_NODELAY: the descriptor of a connection that will `connect(to:length:)`.
    public static func clientSocket(family: Int32) throws(RawSocketError) -> Int32 {
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw RawSocketError("socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return descriptor
    }

    /// Connects this connection's socket (from `clientSocket`) to `address`. Heard: `started`
    /// once TCP is up (what was appended before goes out then), or `closed(error:)` when it
    /// fails. Throws, with the descriptor closed, when the connect cannot even start.
    public func connect(to address: UnsafePointer<sockaddr>, length: socklen_t) throws(RawSocketError) {
        assert(loop.inEventLoop, "RawConnection.connect off its loop")
        if Glibc.connect(descriptor, address, length) == 0 {
            do {
                try loop.watch(descriptor, events: Self.readEvents, self)
            } catch {
                Glibc.close(descriptor)
                isClosed = true
                throw error
            }
            started(remoteAddress: nil)
            return
        }
        let code = errno
        guard code == EINPROGRESS else {
            Glibc.close(descriptor)
            isClosed = true
            throw RawSocketError("connect", errno: code)
        }
        connecting = true
        do {
            try loop.watch(descriptor, events: EPOLLOUT.rawValue, self)
        } catch {
            Glibc.close(descriptor)
            isClosed = true
            throw error
        }
    }

    /// EPOLLOUT (or an error) on a connecting socket: up, or failed.
    private func connected(_ events: UInt32) {
        connecting = false
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &code, &length) != 0 { code = errno }
        if code == 0, events & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { code = ECONNREFUSED }
        guard code == 0 else {
            closeNow(failure: code)
            return
        }
        updateInterest()
        started(remoteAddress: nil)
        if !isClosed, outbound != nil, !watchingWrites { writePending() }
    }

    // MARK: Readiness

    /// Watches the socket, then says it is open.
    func register(remoteAddress: String?) throws {
        try loop.watch(descriptor, events: Self.readEvents, self)
        started(remoteAddress: remoteAddress)
    }

    public func ready(_ events: UInt32) {
        if connecting {
            connected(events)
            return
        }
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
                deliver(UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
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

    private func deliver(_ bytes: UnsafeRawBufferPointer) {
        if inbound == nil, receivedInPlace(bytes) { return }
        // What the subclass makes of the bytes may keep slices of them (payloads): each read
        // gets a buffer of its own, the size of what was read.
        var buffer: ByteBuffer
        if var pending = inbound {
            inbound = nil
            pending.writeBytes(bytes)
            buffer = pending
        } else {
            buffer = loop.allocator.buffer(bytes: bytes)
        }
        received(&buffer)
        if !isClosed, buffer.readableBytes > 0 {
            buffer.discardReadBytes()
            inbound = buffer
        }
    }

    private func updateInterest() {
        guard !isClosed else { return }
        // Held: edge-triggered with nothing asked, so that a peer's close does not spin the
        // loop; level-triggered reads resume with `resumeReading`.
        var events: UInt32 = readHeld || closeWhenWritten ? EPOLLET.rawValue : Self.readEvents
        if watchingWrites { events |= EPOLLOUT.rawValue }
        loop.modify(descriptor, events: events)
    }

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
            if !closeWhenWritten { drained() }
        }
        if closeWhenWritten { closeNow(failure: 0) }
    }

    /// Closes the socket; the subclass hears of it after the current event.
    private func closeNow(failure: Int32) {
        guard !isClosed else { return }
        isClosed = true
        closePending = true
        self.failure = failure
        inbound = nil
        outbound = nil
        loop.closeWatched(descriptor)
        loop.afterEvents(self)
    }

    public func afterEvents() {
        if flushScheduled {
            flushScheduled = false
            if !isClosed { flush() }
        }
        guard closePending else { return }
        closePending = false
        let failure = self.failure
        self.failure = 0
        closed(error: failure == 0 ? nil : RawSocketError("socket", errno: failure))
    }
}
#endif
