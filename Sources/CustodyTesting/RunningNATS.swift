import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Debian's nats-server (2.9) with JetStream on 127.0.0.1: one server, or a cluster of servers
/// routed to each other, on free ports with scratch store directories. `stop(server:)` kills
/// one (SIGKILL), `start(server:)` starts it again with its store. Removed by `cleanUp()`.
public final class RunningNATS: @unchecked Sendable {
    public struct Server: Sendable {
        public let name: String
        public let port: Int
        public let clusterPort: Int
        public let monitorPort: Int
        public let directory: String
        /// Where it listens, and the command that runs it there (a network namespace's
        /// `ip netns exec NS`; empty: here, on 127.0.0.1).
        public var host = "127.0.0.1"
        public var launcher: [String] = []
        public var url: String { "nats://\(host):\(port)" }
    }

    public let servers: [Server]
    private var processes: [Process?]
    private let clusterName: String

    /// Every server's client URL, for `--cluster-nats`.
    public var urls: [String] { servers.map(\.url) }
    public var url: String { servers[0].url }

    /// Starts `size` servers (1, or 3 for a JetStream cluster) and waits until each is healthy.
    public convenience init(_ label: String, servers size: Int = 1) throws {
        try self.init(label, size: size, placed: nil)
    }

    /// One server at `host`, run by `launcher` (a network namespace's `ip netns exec NS`,
    /// where ports 4222 and 8222 are its own).
    public convenience init(_ label: String, host: String, launcher: [String]) throws {
        try self.init(label, size: 1, placed: (host, launcher))
    }

    private init(_ label: String, size: Int, placed: (host: String, launcher: [String])?) throws {
        let root = scratchDirectory("nats-\(label)")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        // Every port of every server at once, all different (a route port that happened to
        // equal another server's client port failed a test's start).
        let ports = placed == nil ? try freeLoopbackPorts(3 * size) : []
        servers = try (0..<size).map { index in
            guard let placed else {
                return Server(name: "n\(index)", port: ports[3 * index], clusterPort: ports[3 * index + 1],
                              monitorPort: ports[3 * index + 2], directory: root + "/n\(index)")
            }
            var server = Server(name: "n\(index)", port: 4222, clusterPort: 6222, monitorPort: 8222, directory: root + "/n\(index)")
            server.host = placed.host
            server.launcher = placed.launcher
            return server
        }
        processes = Array(repeating: nil, count: size)
        clusterName = "custody-test-\(UUID().uuidString.prefix(8))"
        for index in servers.indices { try launch(index) }
        do {
            for index in servers.indices { try waitUntilHealthy(index) }
        } catch {
            cleanUp()
            throw error
        }
    }

    private func launch(_ index: Int) throws {
        let server = servers[index]
        var arguments = [
            "-n", server.name, "-a", server.host, "-p", String(server.port), "-m", String(server.monitorPort),
            "-js", "-sd", server.directory,
        ]
        if servers.count > 1 {
            let routes = servers.filter { $0.name != server.name }.map { "nats://127.0.0.1:\($0.clusterPort)" }
            arguments += [
                "--cluster_name", clusterName, "--cluster", "nats://127.0.0.1:\(server.clusterPort)",
                "--routes", routes.joined(separator: ","),
            ]
        }
        let command = server.launcher + ["/usr/sbin/nats-server"] + arguments
        processes[index] = try launchLogged(command[0], Array(command.dropFirst()), log: server.directory + ".log")
    }

    public func log(server index: Int = 0) -> String {
        (try? String(contentsOfFile: servers[index].directory + ".log", encoding: .utf8)) ?? ""
    }

    /// Waits until the server's `/healthz` says ok (JetStream ready, in a cluster: current).
    public func waitUntilHealthy(_ index: Int = 0, timeout: Double = 60) throws {
        let curl = servers[index].launcher + [
            "/usr/bin/curl", "-s", "-m", "2", "http://\(servers[index].host):\(servers[index].monitorPort)/healthz",
        ]
        try CustodyTesting.waitUntilHealthy(
            "nats-server \(servers[index].name)", process: processes[index], timeout: timeout, log: { log(server: index) }
        ) {
            guard let (status, out, _) = try? run(curl[0], Array(curl.dropFirst()), timeout: 5) else { return false }
            return status == 0 && out.contains("\"ok\"")
        }
    }

    /// SIGKILL to one server, waited for.
    public func stop(server index: Int = 0) { killAndWait(processes[index]) }

    /// Starts a stopped server again with its store (it rejoins its cluster).
    public func start(server index: Int = 0, waitForHealth: Bool = true) throws {
        guard processes[index]?.isRunning != true else { return }
        try launch(index)
        if waitForHealth { try waitUntilHealthy(index) }
    }

    public func cleanUp() {
        for index in servers.indices { stop(server: index) }
        if let first = servers.first {
            try? FileManager.default.removeItem(atPath: (first.directory as NSString).deletingLastPathComponent)
        }
    }

    deinit { for index in servers.indices { stop(server: index) } }
}
