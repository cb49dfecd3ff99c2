import Dispatch
import EpollTransport
import MQTTCodec
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Monotonic nanoseconds; the one clock of the load generator.
@inline(__always) func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

/// The load generator's single event loop and the connections it drives.
///
/// Everything below runs on ONE thread: the generator shares a 2-core machine with the broker,
/// so it must not take a core of its own per connection. The loop is the epoll transport's
/// (`EpollEventLoop`, bare non-blocking sockets, the same the broker's front runs on): a
/// connect cycle costs the generator a socket, a connect, two small writes, two reads and a
/// close, and no channel pipeline. All mutable state of the engine, its connections and the
/// modes is touched only on `loop`; that is why these classes are `@unchecked Sendable`
/// (the loop's closures must be `@Sendable`, but they only ever run on `loop`).
final class LoadEngine: @unchecked Sendable {
    let loop: EpollEventLoop
    let address: SocketAddress
    let version: MQTTProtocolVersion
    let encoder: MQTTEncoder
    /// Nanoseconds a connection may wait for TCP, CONNACK or an expected close.
    let timeout: UInt64
    /// Nanoseconds to wait for the broker to close after our DISCONNECT before closing ourselves.
    let closeWait: UInt64

    /// Connections with something to watch (deadlines, pings); compacted by `sweep`.
    private var watched: [BenchConnection] = []
    private var sweeper: RepeatedTask?
    /// Set when the run's hard deadline passes: modes start nothing new, open connections are closed.
    private(set) var aborted = false
    /// Connections we closed ourselves because the broker did not close after DISCONNECT.
    var lateCloses = 0
    var pingsSent = 0
    var pongsReceived = 0

    init(address: SocketAddress, version: MQTTProtocolVersion, timeoutMilliseconds: Int, closeWaitMilliseconds: Int) throws {
        self.loop = try EpollEventLoop(name: "custody-bench")
        self.address = address
        self.version = version
        self.encoder = MQTTEncoder(protocolVersion: version)
        self.timeout = UInt64(timeoutMilliseconds) * 1_000_000
        self.closeWait = UInt64(closeWaitMilliseconds) * 1_000_000
    }

    /// Runs `body` on the loop and blocks the calling thread until the mode calls `finish`.
    /// `hardLimitSeconds` bounds the whole run: after it every open connection is closed with
    /// the failure `run_deadline`, which lets every mode wind down and report.
    func run(hardLimitSeconds: Double, _ body: @escaping @Sendable (LoadEngine, EventLoopPromise<Report>) -> Void) throws -> Report {
        let promise = loop.makePromise(of: Report.self)
        loop.execute {
            self.sweeper = self.loop.scheduleRepeatedTask(initialDelay: .milliseconds(20), delay: .milliseconds(20)) { _ in
                self.sweep()
            }
            self.loop.scheduleTask(in: .nanoseconds(Int64(hardLimitSeconds * 1e9))) { self.abort() }
            body(self, promise)
        }
        defer {
            let done = DispatchSemaphore(value: 0)
            loop.execute {
                self.sweeper?.cancel()
                for connection in self.watched where connection.phase != .closed { connection.close() }
                done.signal()
            }
            done.wait()
            try? loop.syncShutdownGracefully()
        }
        let report = try promise.futureResult.wait()
        return report
    }

    func abort() {
        aborted = true
        for connection in watched where connection.phase != .closed {
            connection.fail("run_deadline")
        }
    }

    /// Opens a TCP connection that sends `connect` once up (to `target`, else the engine's
    /// address). The callbacks run on the loop.
    func open(_ connection: BenchConnection, at target: SocketAddress? = nil) {
        let address = target ?? self.address
        connection.engine = self
        connection.startedAt = monotonicNanoseconds()
        connection.deadline = connection.startedAt &+ timeout
        connection.phase = .connecting
        watched.append(connection)
        do {
            let descriptor = try RawConnection.clientSocket(family: address.protocol.rawValue)
            let socket = BenchSocket(descriptor: descriptor, loop: loop)
            socket.owner = connection
            connection.socket = socket
            try address.withSockAddr { pointer, length in
                try socket.connect(to: pointer, length: socklen_t(length))
            }
        } catch {
            connection.connectFailed(error)
        }
    }

    /// Deadlines and keep-alive pings of every watched connection, every 20 ms.
    private func sweep() {
        let now = monotonicNanoseconds()
        var index = 0
        while index < watched.count {
            let connection = watched[index]
            if connection.phase == .closed {
                watched.swapAt(index, watched.count - 1)
                watched.removeLast()
                continue
            }
            connection.check(now)
            index += 1
        }
    }

    /// Why an I/O error happened, as a short error key.
    static func reason(of error: Error) -> String {
        if let error = error as? RawSocketError { return error.code == 0 ? "error" : reason(errno: error.code) }
        if let error = error as? IOError { return reason(errno: error.errnoCode) }
        return "error"
    }

    static func reason(errno code: Int32) -> String {
        switch code {
        case ECONNREFUSED: "refused"
        case ECONNRESET, EPIPE: "reset"
        case ETIMEDOUT: "timeout"
        case EADDRNOTAVAIL: "no_local_port"
        case EMFILE, ENFILE: "too_many_files"
        case ENETUNREACH, EHOSTUNREACH: "unreachable"
        default: "errno_\(code)"
        }
    }
}

/// The socket of a `BenchConnection`: what the transport hears goes to its owner.
final class BenchSocket: RawConnection {
    var owner: BenchConnection?

    override func started(remoteAddress: String?) { owner?.socketStarted() }
    override func received(_ buffer: inout ByteBuffer) { owner?.socketReceived(&buffer) }
    override func drained() { owner?.onWritable?(owner!) }
    override func closed(error: RawSocketError?) {
        let owner = self.owner
        self.owner = nil
        owner?.socketClosed(error)
    }
}

/// One MQTT client connection of the generator. It sends CONNECT when TCP is up, reports the
/// CONNACK, and after that does what its mode asks (DISCONNECT, keep with PINGREQ, wait for the
/// broker to close it). `onClose` is called exactly once, whatever happened.
final class BenchConnection: @unchecked Sendable {
    enum Phase { case idle, connecting, awaitingConnAck, open, awaitingClose, disconnecting, closed }

    /// Bytes waiting in the socket's buffer past which a connection is not writable (the
    /// publish mode holds back until `onWritable`).
    static let highWaterBytes = 64 << 10

    let connect: MQTTConnect
    /// The mode's own number for this connection (slot, session index).
    let tag: Int
    var engine: LoadEngine!
    fileprivate(set) var socket: BenchSocket?
    private var decoder: MQTTDecoder

    var phase = Phase.idle
    var startedAt: UInt64 = 0
    var connAckAt: UInt64 = 0
    var closedAt: UInt64 = 0
    var deadline: UInt64 = 0
    var connAck: MQTTConnAck?
    /// The first thing that went wrong, as an error key; nil if nothing did.
    var failure: String?
    /// The reason code of a DISCONNECT the broker sent, if it sent one.
    var serverDisconnect: MQTTReasonCode?
    /// Nanoseconds between PINGREQs once open; 0 sends none.
    var pingInterval: UInt64 = 0
    var nextPingAt: UInt64 = 0
    var pingOutstandingSince: UInt64 = 0

    var onConnAck: ((BenchConnection) -> Void)?
    var onClose: ((BenchConnection) -> Void)?
    /// Every other packet from the broker once the CONNACK is in (PUBLISH, PUBACK, SUBACK, ...).
    var onPacket: ((BenchConnection, MQTTPacket) -> Void)?
    /// The socket took everything that had waited for it (after `isWritable` was false).
    var onWritable: ((BenchConnection) -> Void)?

    /// Bytes waiting for `flushQueued`: packets added by `queue`, or written here directly by
    /// a mode. A read batch ends with a flush, so answers to what it held go out in one write.
    var queued = ByteBuffer()

    init(connect: MQTTConnect, tag: Int) {
        self.connect = connect
        self.tag = tag
        self.decoder = MQTTDecoder(protocolVersion: connect.protocolVersion)
    }

    /// Connect latency: from starting TCP to the CONNACK, in nanoseconds.
    var connectLatency: UInt64 { connAckAt &- startedAt }

    fileprivate func socketStarted() {
        guard phase == .connecting else { return }
        phase = .awaitingConnAck
        send(.connect(connect))
    }

    fileprivate func socketReceived(_ buffer: inout ByteBuffer) {
        while phase != .closed {
            switch decoder.decode(&buffer) {
            case .needMoreData:
                flushQueued()
                return
            case .packet(let packet):
                received(packet)
            case .failure:
                fail("malformed")
                return
            }
        }
    }

    private func received(_ packet: MQTTPacket) {
        switch packet {
        case .connack(let ack):
            guard phase == .awaitingConnAck else { return fail("unexpected_connack") }
            connAck = ack
            connAckAt = monotonicNanoseconds()
            deadline = 0
            if ack.reasonCode == .success {
                phase = .open
                if pingInterval > 0 { nextPingAt = connAckAt &+ pingInterval }
            } else {
                // The broker closes after a refusal; wait for that, within the timeout.
                phase = .awaitingClose
                deadline = connAckAt &+ engine.timeout
            }
            onConnAck?(self)
        case .disconnect(let disconnect):
            serverDisconnect = disconnect.reasonCode
        case .pingresp:
            if pingOutstandingSince != 0 {
                pingOutstandingSince = 0
                engine.pongsReceived += 1
            }
        default:
            onPacket?(self, packet)
        }
    }

    /// Whether the socket holds less than `highWaterBytes` not yet sent.
    var isWritable: Bool { (socket?.outboundBytes ?? Int.max) < Self.highWaterBytes }

    fileprivate func socketClosed(_ error: RawSocketError?) {
        if let error, failure == nil { failure = LoadEngine.reason(of: error) }
        finishClosing()
    }

    func connectFailed(_ error: Error) {
        guard phase != .closed else { return }
        if failure == nil { failure = LoadEngine.reason(of: error) }
        socket?.owner = nil
        socket = nil
        finishClosing()
    }

    private func finishClosing() {
        guard phase != .closed else { return }
        if failure == nil, phase == .connecting || phase == .awaitingConnAck { failure = "closed_before_connack" }
        phase = .closed
        closedAt = monotonicNanoseconds()
        socket = nil
        let callback = onClose
        onClose = nil
        onConnAck = nil
        onPacket = nil
        onWritable = nil
        queued = ByteBuffer()
        callback?(self)
    }

    /// Sends `packet` now, after anything still in `queued`.
    func send(_ packet: MQTTPacket) {
        guard socket != nil else { return }
        queue(packet)
        flushQueued()
    }

    /// Adds `packet` to `queued`; nothing is sent before `flushQueued`.
    func queue(_ packet: MQTTPacket) {
        do {
            try engine.encoder.encode(packet, into: &queued)
        } catch {
            fail("encode")
        }
    }

    /// Writes and flushes what `queue` (or a mode) put in `queued`.
    func flushQueued() {
        guard queued.readableBytes > 0, let socket else { return }
        socket.appendOutbound { $0.writeBuffer(&queued) }
        queued.clear()
        socket.flush()
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close, as MQTT says it must;
    /// closes itself after `closeWait` if the broker does not.
    func disconnect(_ reasonCode: MQTTReasonCode = .normalDisconnection) {
        guard phase == .open else { return close() }
        send(.disconnect(MQTTDisconnect(reasonCode: reasonCode)))
        phase = .disconnecting
        deadline = monotonicNanoseconds() &+ engine.closeWait
    }

    /// Expects the broker to close this connection (a takeover) by `deadline`; fails with
    /// `reason` otherwise.
    func expectClose(within nanoseconds: UInt64) {
        guard phase == .open else { return }
        phase = .awaitingClose
        deadline = monotonicNanoseconds() &+ nanoseconds
    }

    func close() {
        guard phase != .closed else { return }
        if let socket {
            socket.close()  // heard as `closed` after the event at hand
        } else {
            finishClosing()
        }
    }

    /// Records the first failure and closes.
    func fail(_ reason: String) {
        guard phase != .closed else { return }
        if failure == nil { failure = reason }
        close()
    }

    /// Called by the engine's sweep.
    func check(_ now: UInt64) {
        switch phase {
        case .connecting:
            if deadline != 0, now > deadline { fail("timeout") }
        case .awaitingConnAck:
            if deadline != 0, now > deadline { fail("timeout") }
        case .awaitingClose:
            if deadline != 0, now > deadline { fail(connAck?.reasonCode == .success ? "not_closed" : "not_closed_after_refusal") }
        case .disconnecting:
            if now > deadline {
                engine.lateCloses += 1
                deadline = .max
                close()
            }
        case .open:
            guard pingInterval > 0 else { return }
            if pingOutstandingSince != 0 {
                if now &- pingOutstandingSince > engine.timeout { fail("ping_timeout") }
            } else if now >= nextPingAt {
                pingOutstandingSince = now
                nextPingAt = now &+ pingInterval
                engine.pingsSent += 1
                send(.pingreq)
            }
        case .idle, .closed:
            break
        }
    }
}
