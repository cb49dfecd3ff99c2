import CustodyTesting
import Foundation
import LedgerCore
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every suite that starts etcd and custody nodes, one after another: their leases and
/// elections are timed, and a machine busy with several clusters at once would let them lapse.
@Suite(.serialized) enum ClusterSuites {}

/// One etcd and `count` custody nodes (n1, n2, …) on it, each with its own ledger.
final class TestCluster: @unchecked Sendable {
    let etcd: RunningEtcd
    private(set) var nodes: [RunningCustody] = []
    let leaseSeconds: Int
    let extra: [String]

    init(_ label: String, nodes count: Int = 3, leaseSeconds: Int = 2, etcdMembers: Int = 1, extra: [String] = []) throws {
        etcd = try RunningEtcd(label, members: etcdMembers)
        self.leaseSeconds = leaseSeconds
        self.extra = extra
        do {
            for index in 1...count { nodes.append(try start(node: "n\(index)")) }
        } catch {
            cleanUp()
            throw error
        }
    }

    func start(node id: String, directory: String? = nil, arguments: [String] = []) throws -> RunningCustody {
        try RunningCustody(
            "cluster-\(id)",
            arguments: [
                "--cluster-etcd", etcd.clientURLs.joined(separator: ","), "--node-id", id,
                "--cluster-lease-seconds", "\(leaseSeconds)", "--connects-per-second-per-session", "0",
            ] + extra + arguments,
            directory: directory)
    }

    func replace(_ index: Int, with node: RunningCustody) { nodes[index] = node }

    /// One more node, stopped with the others.
    func add(_ node: RunningCustody) { nodes.append(node) }

    /// SIGKILL to one node, waited for: its lease is neither renewed nor revoked.
    func killNode(_ index: Int) {
        kill(nodes[index].process.processIdentifier, SIGKILL)
        nodes[index].process.waitUntilExit()
    }

    subscript(_ index: Int) -> RunningCustody { nodes[index] }

    /// What every node wrote, for a failing test's record.
    var outputs: String {
        nodes.enumerated().map { "n\($0.offset + 1):\n\($0.element.stdout)\n\($0.element.stderr)" }.joined(separator: "\n")
    }

    func cleanUp() {
        for node in nodes { node.cleanUp() }
        etcd.cleanUp()
    }
}

/// Runs `body` with a fresh cluster; its nodes' output goes into the issues when it fails.
func withCluster(
    _ label: String, nodes: Int = 3, leaseSeconds: Int = 2, etcdMembers: Int = 1, extra: [String] = [],
    _ body: (TestCluster) throws -> Void
) throws {
    let cluster = try TestCluster(label, nodes: nodes, leaseSeconds: leaseSeconds, etcdMembers: etcdMembers, extra: extra)
    defer { cluster.cleanUp() }
    do {
        try body(cluster)
    } catch {
        Issue.record("cluster output:\n\(cluster.outputs)")
        throw error
    }
}

/// mosquitto_sub (MQTT 5, `-d`) holding a session open on a node until stopped; what it
/// printed (CONNACK codes, a DISCONNECT from the server) is in `output`.
final class HeldSession: @unchecked Sendable {
    let spawned: SpawnedProcess

    init(port: Int, session: String, user: String, expiry: Int = 600, cleanStart: Bool = false, launcher: [String] = []) throws {
        // Line-buffered: its output is a file, read while it runs.
        let command = launcher + [
            "/usr/bin/stdbuf", "-oL", "/usr/bin/mosquitto_sub", "-V", "5", "-p", "\(port)", "-i", session, "-u", user,
            "-t", "t/\(session)", "-d", "-x", "\(expiry)",
        ] + (cleanStart ? [] : ["-c"])
        spawned = try SpawnedProcess(command[0], Array(command.dropFirst()))
    }

    var output: String { spawned.output }
    var isRunning: Bool { spawned.process.isRunning }

    /// Waits until the output holds `text`.
    @discardableResult
    func wait(for text: String, timeout: Double = 10) throws -> String {
        try spawned.waitForOutput(containing: text, timeout: timeout)
    }

    /// Ends the client without a DISCONNECT of its own (SIGKILL): custody sees the connection lost.
    func kill() { spawned.kill() }
}

/// One CONNECT with mosquitto_pub (MQTT 5, clean start 0 unless told): the CONNACK reason code.
func connackCode(port: Int, session: String, user: String, expiry: Int = 600, launcher: [String] = []) throws -> Int {
    let command = launcher + [
        "/usr/bin/mosquitto_pub", "-V", "5", "-p", "\(port)", "-i", session, "-u", user, "-t", "t/\(session)", "-m", "x",
        "-d", "-c", "-x", "\(expiry)",
    ]
    let (_, out, err) = try run(command[0], Array(command.dropFirst()), timeout: 20)
    let text = out + err
    guard let range = text.range(of: "received CONNACK ("),
        let code = Int(text[range.upperBound...].prefix(while: \.isNumber))
    else {
        throw TestFailure.unexpected("no CONNACK from mosquitto_pub:\n\(text)")
    }
    return code
}

/// Waits until `node`'s ledger holds an event that satisfies `match`.
@discardableResult
func waitForEvent(_ node: RunningCustody, timeout: Double = 15, _ match: (LedgerEvent) -> Bool) throws -> LedgerEvent {
    try node.waitForEvent(timeout: timeout, match)
}

/// The answer of an async call, awaited from a blocking test body (inside `offPool`).
final class Awaited<T: Sendable>: Sendable {
    private let result = Mutex<Result<T, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () async throws -> T) {
        Task {
            let outcome: Result<T, any Error>
            do { outcome = .success(try await body()) } catch { outcome = .failure(error) }
            self.result.withLock { $0 = outcome }
            self.done.signal()
        }
    }

    func value(timeout: Double = 20) throws -> T {
        guard done.wait(timeout: .now() + timeout) == .success else { throw TestFailure.timeout("an async call") }
        return try result.withLock { $0! }.get()
    }
}

func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    try Awaited(body).value()
}
