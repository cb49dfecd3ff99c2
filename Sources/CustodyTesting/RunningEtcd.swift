import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Debian's etcd (3.4) on 127.0.0.1: one member, or every member of a cluster, on free ports
/// with scratch data directories. `stop(member:)` kills one (SIGKILL), `start(member:)`
/// starts it again with its data. Stopped and removed by `cleanUp()`.
public final class RunningEtcd: @unchecked Sendable {
    public struct Member: Sendable {
        public let name: String
        public let clientPort: Int
        public let peerPort: Int
        public let directory: String
        /// Where it listens: 127.0.0.1, or an address inside a network namespace.
        public var host = "127.0.0.1"
        /// A command that execs etcd (and curl, to ask its health) with the arguments that
        /// follow: `ip netns exec NS` runs the member in a network namespace.
        public var launcher: [String] = []
        public var clientURL: String { "http://\(host):\(clientPort)" }
        public var peerURL: String { "http://\(host):\(peerPort)" }
    }

    public let members: [Member]
    private var processes: [Process?]
    private let initialCluster: String
    private let token: String

    /// The client URLs of every member, for `--cluster-etcd`.
    public var clientURLs: [String] { members.map(\.clientURL) }
    /// The first member's client URL.
    public var url: String { members[0].clientURL }

    /// Starts `size` members (1 or 3, say) on 127.0.0.1 and waits until the cluster answers.
    public convenience init(_ label: String, members size: Int = 1) throws {
        try self.init(label, placed: (0..<size).map { _ in (host: "127.0.0.1", launcher: []) })
    }

    /// One member per place: its address and the launcher that runs it there (a network
    /// namespace's `ip netns exec NS`, where ports 2379 and 2380 are its own).
    public init(_ label: String, placed: [(host: String, launcher: [String])]) throws {
        let root = scratchDirectory("etcd-\(label)")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var members: [Member] = []
        // All loopback members' ports at once, all different.
        let ports = try freeLoopbackPorts(2 * placed.count)
        for (index, place) in placed.enumerated() {
            let loopback = place.launcher.isEmpty
            var member = Member(
                name: "m\(index)", clientPort: loopback ? ports[2 * index] : 2379,
                peerPort: loopback ? ports[2 * index + 1] : 2380, directory: root + "/m\(index)")
            member.host = place.host
            member.launcher = place.launcher
            members.append(member)
        }
        self.members = members
        processes = Array(repeating: nil, count: placed.count)
        initialCluster = members.map { "\($0.name)=\($0.peerURL)" }.joined(separator: ",")
        token = "custody-test-\(UUID().uuidString)"
        for index in members.indices { try launch(index) }
        do {
            for index in members.indices { try waitUntilHealthy(index) }
        } catch {
            cleanUp()
            throw error
        }
    }

    private func launch(_ index: Int) throws {
        let member = members[index]
        let executable = member.launcher.first ?? "/usr/bin/etcd"
        let arguments = Array(member.launcher.dropFirst()) + (member.launcher.isEmpty ? [] : ["/usr/bin/etcd"]) + [
            "--name", member.name, "--data-dir", member.directory,
            "--listen-client-urls", member.clientURL, "--advertise-client-urls", member.clientURL,
            "--listen-peer-urls", member.peerURL, "--initial-advertise-peer-urls", member.peerURL,
            "--initial-cluster", initialCluster, "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            // Elections of a second (etcd's default), so that a test that stops a member does not
            // wait long for a leader, yet a busy machine does not make the members lose theirs.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
        ]
        processes[index] = try launchLogged(executable, arguments, log: member.directory + ".log")
    }

    /// The member's log (etcd writes it to standard error).
    public func log(member index: Int = 0) -> String {
        (try? String(contentsOfFile: members[index].directory + ".log", encoding: .utf8)) ?? ""
    }

    /// Waits until the member answers `/health` with `"health":"true"`.
    public func waitUntilHealthy(_ index: Int = 0, timeout: Double = 30) throws {
        let launcher = members[index].launcher
        let curl = ["/usr/bin/curl", "-s", "-m", "2", members[index].clientURL + "/health"]
        try CustodyTesting.waitUntilHealthy(
            "etcd \(members[index].name)", process: processes[index], timeout: timeout, log: { log(member: index) }
        ) {
            guard let (status, out, _) = try? run((launcher + curl)[0], Array((launcher + curl).dropFirst()), timeout: 5) else {
                return false
            }
            return status == 0 && out.contains("\"health\":\"true\"")
        }
    }

    /// SIGKILL to one member, waited for.
    public func stop(member index: Int = 0) { killAndWait(processes[index]) }

    /// Starts a stopped member again with its data directory (it rejoins its cluster).
    public func start(member index: Int = 0, waitForHealth: Bool = true) throws {
        guard processes[index]?.isRunning != true else { return }
        try launch(index)
        if waitForHealth { try waitUntilHealthy(index) }
    }

    public func cleanUp() {
        for index in members.indices { stop(member: index) }
        if let first = members.first {
            try? FileManager.default.removeItem(atPath: (first.directory as NSString).deletingLastPathComponent)
        }
    }

    deinit { for index in members.indices { stop(member: index) } }
}
