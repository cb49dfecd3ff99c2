import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A port nobody listens on right now on 127.0.0.1 (bound and released).
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw TestFailure.unexpected("no free port: errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// `count` free TCP ports on 127.0.0.1, all different: each stays bound until all are
/// chosen (ports chosen one after another with `freeLoopbackPort` may repeat).
public func freeLoopbackPorts(_ count: Int) throws -> [Int] {
    var descriptors: [Int32] = []
    defer { for fd in descriptors { close(fd) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure.unexpected("no socket: errno \(errno)") }
        descriptors.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw TestFailure.unexpected("no free port: errno \(errno)") }
        ports.append(Int(UInt16(bigEndian: address.sin_port)))
    }
    return ports
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` now.
public func acceptsConnections(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

/// Debian's mosquitto (2.0) on 127.0.0.1, from a configuration of its listener and `lines`,
/// logging everything to a file in its own directory; `restart()` keeps the port.
/// Stopped with SIGKILL (Foundation's Process starts children with SIGTERM blocked).
public final class RunningMosquitto: @unchecked Sendable {
    public let directory: String
    public let port: Int
    public private(set) var process = Process()
    private let configuration: String

    /// `lines`: more configuration (plugin, plugin_opt_..., allow_anonymous). It runs as the
    /// user running the test (started as root it would drop to `mosquitto`, who may not open
    /// a root-owned 0660 ledger socket). `persistence`: its database in `directory` (what the
    /// benchmarks compare custody with); `logEverything` false: errors and warnings only, no
    /// line per connection (for load).
    public init(
        _ label: String, lines: [String], port: Int? = nil, persistence: Bool = false, logEverything: Bool = true
    ) throws {
        directory = scratchDirectory("mosquitto-\(label)")
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o777])
        self.port = try port ?? freeLoopbackPort()
        let user = getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "root"
        configuration = ([
            "listener \(self.port) 127.0.0.1", "user \(user)", "log_dest file \(directory)/mosquitto.log",
        ] + (logEverything ? ["log_type all"] : ["log_type error", "log_type warning", "connection_messages false"])
            + (persistence ? ["persistence true", "persistence_location \(directory)/"] : ["persistence false"])
            + lines).joined(separator: "\n") + "\n"
        try configuration.write(toFile: directory + "/mosquitto.conf", atomically: true, encoding: .utf8)
        try start()
    }

    public var log: String { (try? String(contentsOfFile: directory + "/mosquitto.log", encoding: .utf8)) ?? "" }
    public var pid: Int32 { process.processIdentifier }

    private func start() throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/mosquitto")
        process.arguments = ["-c", directory + "/mosquitto.conf"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !acceptsConnections(port: port) {
            guard Date() < deadline, process.isRunning else {
                kill()
                throw TestFailure.unexpected("mosquitto never listened on \(port); log:\n\(log)")
            }
            usleep(20_000)
        }
    }

    /// SIGKILL, waited for.
    public func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Killed and started again with the same configuration and port.
    public func restart() throws {
        kill()
        try start()
    }

    public func cleanUp() {
        kill()
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { kill() }
}
