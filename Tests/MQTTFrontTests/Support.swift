@_exported import CustodyTesting
import Foundation
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

#if canImport(Glibc)
import Glibc
#endif

typealias E2EError = TestFailure

/// For tests that CONNECT the same session name again within a second (takeovers, resumed
/// sessions, a client id used twice in a row): the connect rate limit
/// (`limits.connectsPerSecondPerSession`, 1 a second by default) off. ConnectRateTests tests it.
let fastReconnects = ["--connects-per-second-per-session", "0"]

/// A blocking TCP socket connected to 127.0.0.1:`port`; `receiveBuffer`: SO_RCVBUF set first.
func connectedSocket(port: Int, receiveBuffer: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw E2EError.unexpected("socket: \(errno)") }
    if var size = receiveBuffer {
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard result == 0 else {
        close(fd)
        throw E2EError.unexpected("connect to \(port): errno \(errno)")
    }
    return fd
}

/// A blocking MQTT client over a plain socket, built on the package's codec, for what the
/// real clients cannot do on purpose (malformed bytes, silence, exact packets).
final class RawClient {
    private(set) var fd: Int32
    private var inbound = ByteBuffer()
    private var decoder: MQTTDecoder
    private let encoder: MQTTEncoder
    private(set) var closedByPeer = false

    /// `receiveBuffer`: SO_RCVBUF set before connecting (a small one makes a slow reader).
    init(port: Int, version: MQTTProtocolVersion = .mqtt5, receiveBuffer: Int32? = nil) throws {
        decoder = MQTTDecoder(protocolVersion: version)
        encoder = MQTTEncoder(protocolVersion: version)
        fd = try connectedSocket(port: port, receiveBuffer: receiveBuffer)
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Closes the socket without a DISCONNECT: to the server, a lost connection.
    func drop() {
        if fd >= 0 { close(fd) }
        fd = -1
    }

    func send(_ packet: MQTTPacket) throws {
        var buffer = ByteBuffer()
        try encoder.encode(packet, into: &buffer)
        try sendRaw(Array(buffer.readableBytesView))
    }

    func sendRaw(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw E2EError.unexpected("send: errno \(errno)") }
            offset += written
        }
    }

    /// The next packet; nil when the server closed the connection. Throws on timeout.
    func receive(timeout: Double = 5) throws -> MQTTPacket? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            switch decoder.decode(&inbound) {
            case .packet(let packet): return packet
            case .failure(let error): throw E2EError.unexpected("server sent a bad packet: \(error)")
            case .needMoreData: break
            }
            if closedByPeer { return nil }
            // A timeout of 0 still looks once at what has arrived.
            let left = deadline.timeIntervalSinceNow
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(max(0, left) * 1000))
            if ready <= 0 {
                if left <= 0 { throw E2EError.timeout("packet from the server") }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 4096, 0) }
            if count <= 0 {
                closedByPeer = true
            } else {
                inbound.writeBytes(chunk[0..<count])
            }
        }
    }

    /// Reads until the server closes; returns what came before. Throws if it stays open.
    func receiveUntilClosed(timeout: Double = 5) throws -> [MQTTPacket] {
        var packets: [MQTTPacket] = []
        while let packet = try receive(timeout: timeout) { packets.append(packet) }
        return packets
    }

    /// CONNECT and its CONNACK.
    func connect(
        _ clientID: String, user: String? = nil, clean: Bool = true, expiry: UInt32? = nil, keepAlive: UInt16 = 60,
        version: MQTTProtocolVersion = .mqtt5, will: MQTTWill? = nil
    ) throws -> MQTTConnAck {
        var properties = MQTTProperties()
        if let expiry { properties.append(.sessionExpiryInterval(expiry)) }
        try send(.connect(MQTTConnect(
            protocolVersion: version, clientIdentifier: clientID, cleanStart: clean, keepAlive: keepAlive,
            userName: user, will: will, properties: properties)))
        guard let answer = try receive() else { throw E2EError.unexpected("closed instead of CONNACK") }
        guard case .connack(let connack) = answer else { throw E2EError.unexpected("\(answer) instead of CONNACK") }
        return connack
    }
}

/// A background process whose output lines can be awaited (mosquitto_sub, paho scripts).
final class Background: @unchecked Sendable {
    let process = Process()
    let outPath: String
    let errPath: String

    init(_ executable: String, _ arguments: [String]) throws {
        let base = scratchDirectory("bg")
        outPath = base + ".out"
        errPath = base + ".err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        try process.run()
    }

    var output: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

    @discardableResult
    func waitForOutput(containing text: String, timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let out = output
            if out.contains(text) { return out }
            if !process.isRunning {
                let last = output
                if last.contains(text) { return last }
                throw E2EError.unexpected("process ended without \"\(text)\": \(last)\n\(errors)")
            }
            usleep(10_000)
        }
        throw E2EError.timeout("\"\(text)\" in:\n\(output)\n\(errors)")
    }

    func waitForExit(timeout: Double = 10) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { throw E2EError.timeout("exit of \(process.arguments ?? [])") }
        return process.terminationStatus
    }

    /// SIGKILL: Foundation's Process starts children with SIGTERM blocked, and a client
    /// killed outright is as good as any for these tests (the server sees a lost connection).
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
    }

    deinit { stop() }
}
