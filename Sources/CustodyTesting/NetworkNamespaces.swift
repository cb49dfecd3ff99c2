import Foundation

/// Network namespaces joined by veth pairs on one bridge, made (and removed) by a test: each
/// side has its own loopback and one address on 10.77.0.0/24; `cut(_:)` sets a side's link
/// down at the bridge, `heal(_:)` up again.
public final class NetworkNamespaces: @unchecked Sendable {
    /// Whether this machine lets us make network namespaces (root or CAP_NET_ADMIN).
    public static let available: Bool = {
        let name = "custody-probe-\(UInt32.random(in: 0...UInt32.max))"
        guard (try? run("/usr/sbin/ip", ["netns", "add", name], timeout: 10))?.0 == 0 else { return false }
        _ = try? run("/usr/sbin/ip", ["netns", "del", name], timeout: 10)
        return true
    }()

    public let tag: String
    public let sides: Int
    var hub: String { "cust\(tag)h" }
    public func namespace(_ side: Int) -> String { "cust\(tag)\(side)" }
    public func address(_ side: Int) -> String { "10.77.0.\(side + 1)" }
    /// Runs a command inside a side's namespace (it execs what follows).
    public func launcher(_ side: Int) -> [String] { ["/usr/sbin/ip", "netns", "exec", namespace(side)] }
    private func hubEnd(_ side: Int) -> String { "v\(tag)\(side)h" }

    public init(sides: Int) throws {
        tag = String(format: "%04x", UInt16.random(in: 0...UInt16.max))
        self.sides = sides
        do {
            try ip(["netns", "add", hub])
            try ip(["-n", hub, "link", "set", "lo", "up"])
            try ip(["-n", hub, "link", "add", "br0", "type", "bridge"])
            try ip(["-n", hub, "link", "set", "br0", "up"])
            for side in 0..<sides {
                let end = "v\(tag)\(side)"
                try ip(["netns", "add", namespace(side)])
                try ip(["link", "add", end, "type", "veth", "peer", "name", hubEnd(side)])
                try ip(["link", "set", end, "netns", namespace(side)])
                try ip(["link", "set", hubEnd(side), "netns", hub])
                try ip(["-n", namespace(side), "addr", "add", address(side) + "/24", "dev", end])
                try ip(["-n", namespace(side), "link", "set", end, "up"])
                try ip(["-n", namespace(side), "link", "set", "lo", "up"])
                try ip(["-n", hub, "link", "set", hubEnd(side), "master", "br0"])
                try ip(["-n", hub, "link", "set", hubEnd(side), "up"])
            }
        } catch {
            remove()
            throw error
        }
    }

    public func cut(_ side: Int) throws { try ip(["-n", hub, "link", "set", hubEnd(side), "down"]) }
    public func heal(_ side: Int) throws { try ip(["-n", hub, "link", "set", hubEnd(side), "up"]) }

    /// Deletes the namespaces (their veth ends go with them).
    public func remove() {
        for side in 0..<sides { _ = try? run("/usr/sbin/ip", ["netns", "del", namespace(side)], timeout: 10) }
        _ = try? run("/usr/sbin/ip", ["netns", "del", hub], timeout: 10)
    }

    private func ip(_ arguments: [String]) throws {
        let (status, out, err) = try run("/usr/sbin/ip", arguments, timeout: 10)
        guard status == 0 else { throw TestFailure.unexpected("ip \(arguments.joined(separator: " ")): \(out)\(err)") }
    }
}

extension NetworkNamespaces {
    /// One custody node per side (n1, n2, …) in the cluster on `etcd`, with its own side's
    /// member first (it asks etcd there unless that fails to answer), and `extra` flags.
    public func custodyNodes(_ label: String, etcd: RunningEtcd, leaseSeconds: Int, extra: [String] = []) throws -> [RunningCustody] {
        var nodes: [RunningCustody] = []
        do {
            for side in 0..<sides {
                let urls = ([side] + (0..<sides).filter { $0 != side }).map { etcd.members[$0].clientURL }
                nodes.append(try RunningCustody(
                    "\(label)-n\(side + 1)",
                    arguments: [
                        "--cluster-etcd", urls.joined(separator: ","), "--node-id", "n\(side + 1)",
                        "--cluster-lease-seconds", "\(leaseSeconds)", "--connects-per-second-per-session", "0",
                    ] + extra,
                    launcher: launcher(side)))
            }
        } catch {
            for node in nodes { node.cleanUp() }
            throw error
        }
        return nodes
    }
}
