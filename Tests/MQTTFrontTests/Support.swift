import Foundation
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

#if canImport(Glibc)
import Glibc
#endif

enum E2EError: Error, CustomStringConvertible {
    case missing(String)
    case timeout(String)
    case unexpected(String)

    var description: String {
        switch self {
        case .missing(let what): "missing: \(what)"
        case .timeout(let what): "timed out: \(what)"
        case .unexpected(let what): "unexpected: \(what)"
        }
    }
}

/// The package root, from this file's path.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A built executable of this package, next to the test binary.
func builtProduct(_ name: String) throws -> URL {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
        packageRoot.appendingPathComponent(".build/debug"),
    ]
    for directory in candidates {
        let url = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw E2EError.missing("\(name) in \(candidates.map(\.path))")
}

func scratchDirectory(_ label: String) -> String {
    let path = NSTemporaryDirectory() + "custody-front-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.removeItem(atPath: path)
    return path
}

/// `custody` on 127.0.0.1 with a free port and its own ledger; stopped (SIGTERM) by `stop()`.
final class RunningCustody: @unchecked Sendable {
    let process = Process()
    let directory: String
    let stdoutPath: String
    let stderrPath: String
    private(set) var port = 0
    private var stopped = false

    init(_ label: String, arguments: [String] = [], directory: String? = nil) throws {
        self.directory = directory ?? scratchDirectory(label)
        stdoutPath = self.directory + ".out"
        stderrPath = self.directory + ".err"
        try start(arguments)
    }

    private func start(_ arguments: [String]) throws {
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = try builtProduct("custody")
        process.arguments = ["--data-dir", directory, "--listen", "127.0.0.1:0"] + arguments
        // Files, not pipes: nobody has to drain them for custody to keep running.
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: stdoutPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        try process.run()
        let line = try waitForOutput(containing: "custody: running", timeout: 30)
        _ = line
        guard let listening = stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: listening mqtt 127.0.0.1:") }),
            let port = Int(listening.split(separator: ":").last ?? "")
        else { throw E2EError.unexpected("no listening line in:\n\(stdout)\n\(stderr)") }
        self.port = port
    }

    var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    @discardableResult
    func waitForOutput(containing text: String, timeout: Double) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let out = stdout
            if out.contains(text) { return out }
            guard process.isRunning else { throw E2EError.unexpected("custody exited: \(out)\n\(stderr)") }
            usleep(10_000)
        }
        throw E2EError.timeout("\(text) in custody's output:\n\(stdout)\n\(stderr)")
    }

    /// Waits for a log line (standard error) containing all of `parts`.
    @discardableResult
    func waitForLog(_ parts: String..., timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = stderr.split(separator: "\n").first(where: { line in parts.allSatisfy { line.contains($0) } }) {
                return String(line)
            }
            usleep(10_000)
        }
        throw E2EError.timeout("log line with \(parts):\n\(stderr)")
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        guard process.isRunning else { return }
        process.terminate()  // SIGTERM: custody closes connections and the ledger
        let deadline = Date().addingTimeInterval(15)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            // Where it hangs, for whoever reads the failure.
            let stacks = (try? run("/usr/bin/gdb", [
                "-p", "\(process.processIdentifier)", "-batch", "-ex", "thread apply all bt 25",
            ], timeout: 60).1) ?? "(no gdb)"
            Issue.record("custody did not stop on SIGTERM\n\(stdout)\n\(stderr)\n\(stacks)")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
    }

    /// Every event in the ledger so far (read-only, while custody runs).
    func events() throws -> [LedgerEvent] {
        let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
        defer { store.close() }
        return try store.read { snapshot in
            let head = try snapshot.head().sequence
            guard head > 0 else { return [] }
            return try (1...head).compactMap { try snapshot.record(at: $0)?.event }
        }
    }

    /// Waits until the ledger holds an event that satisfies `match`.
    @discardableResult
    func waitForEvent(timeout: Double = 10, _ match: (LedgerEvent) -> Bool) throws -> LedgerEvent {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let event = try events().first(where: match) { return event }
            usleep(20_000)
        }
        throw E2EError.timeout("ledger event; have \(try events().map { "\($0.kind) \($0.sessionName)" })")
    }

    func cleanUp() {
        stop()
        for path in [directory, stdoutPath, stderrPath] { try? FileManager.default.removeItem(atPath: path) }
    }

    deinit { stop() }
}

/// Runs `body` against its own `custody` (stopped and removed afterwards); when it fails,
/// custody's output goes into the test's issues.
func withCustody(
    _ label: String, _ arguments: [String] = [], directory: String? = nil, _ body: (RunningCustody) throws -> Void
) throws {
    let custody = try RunningCustody(label, arguments: arguments, directory: directory)
    defer { custody.cleanUp() }
    do {
        try body(custody)
    } catch {
        Issue.record("custody output:\n\(custody.stdout)\ncustody log:\n\(custody.stderr)")
        throw error
    }
}

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

/// Runs a process to its end (with a time limit) and returns its status, output and error.
func run(_ executable: String, _ arguments: [String], timeout: Double = 20) throws -> (Int32, String, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let base = scratchDirectory("proc")
    _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
    _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: base + ".out")
        try? FileManager.default.removeItem(atPath: base + ".err")
    }
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { usleep(10_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw E2EError.timeout("\(executable) \(arguments)")
    }
    let out = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
    return (process.terminationStatus, out, err)
}

/// The Python with paho-mqtt 2.x that `Tools/custody-setup` installs.
func pahoPython() throws -> String {
    let path = packageRoot.appendingPathComponent(".venv-tests/bin/python").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw E2EError.missing("\(path): run Tools/custody-setup")
    }
    return path
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
