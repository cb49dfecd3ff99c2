import Foundation
import Yams

/// A cluster of nodes whose session ownership etcd decides (`cluster:` in the file,
/// `--cluster-etcd URL[,URL…] --node-id NAME [--cluster-lease-seconds S]`). nil: one node,
/// the embedded ledger alone decides.
public struct ClusterConfiguration: Sendable, Equatable {
    /// etcd's client URLs (its v3 JSON gateway), `http://host:port`.
    public var etcd: [String]
    /// This node's name in the cluster: unique among live nodes.
    public var nodeID: String
    /// How long the node's lease lives without a keepalive; a node cut off from etcd stops
    /// serving within it, and its sessions become resumable elsewhere after it.
    public var leaseSeconds: Int
    /// NATS servers (`nats://host:port`) that carry messages between the nodes over JetStream
    /// (issue 19); empty: each node delivers only its own clients' messages.
    public var nats: [String] = []
    /// Replicas of the JetStream stream the messages are kept in (3 on a NATS cluster of 3).
    public var natsReplicas = 1
    /// At most this many QoS 1/2 messages of one topic in one JetStream message (1: each alone,
    /// as nodes before the batching wrote them; for a rolling upgrade from those).
    public var natsBatch = ClusterConfiguration.defaultNATSBatch

    public static let leaseSecondsRange = 2...3600
    public static let natsReplicasRange = 1...5
    public static let natsBatchRange = 1...1024
    public static let defaultNATSBatch = 256
    public static let defaultLeaseSeconds = 10

    public init(etcd: [String], nodeID: String, leaseSeconds: Int = ClusterConfiguration.defaultLeaseSeconds) {
        self.etcd = etcd
        self.nodeID = nodeID
        self.leaseSeconds = leaseSeconds
    }

    /// What is wrong with one etcd URL, nil when it will do.
    public static func problem(url: String) -> String? {
        guard let parsed = URLComponents(string: url), parsed.scheme == "http" || parsed.scheme == "https",
            let host = parsed.host, !host.isEmpty, parsed.query == nil, parsed.path.isEmpty || parsed.path == "/"
        else {
            return "'\(url)' is not an etcd client URL such as http://127.0.0.1:2379"
        }
        return nil
    }

    /// What is wrong with one NATS URL, nil when it will do: `nats://host[:port]`.
    public static func problem(natsURL url: String) -> String? {
        guard let parsed = URLComponents(string: url), parsed.scheme == "nats", let host = parsed.host, !host.isEmpty,
            parsed.query == nil, parsed.user == nil, parsed.path.isEmpty || parsed.path == "/",
            parsed.port.map({ (1...65535).contains($0) }) ?? true
        else {
            return "'\(url)' is not a NATS server URL such as nats://127.0.0.1:4222"
        }
        return nil
    }

    /// What is wrong with a node id, nil when it will do: 1–128 of A–Z a–z 0–9 . _ -
    public static func problem(nodeID: String) -> String? {
        let allowed = nodeID.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || "._-".unicodeScalars.contains(scalar))
        }
        guard (1...128).contains(nodeID.count), allowed else {
            return "'\(nodeID)' is not a node id (1-128 characters of A-Z a-z 0-9 . _ -)"
        }
        return nil
    }
}

extension ConfigurationReader {
    func cluster(_ node: Node) throws(ConfigurationError) -> ClusterConfiguration {
        let keys = try mapping(node, "cluster", known: ["etcd", "nodeId", "leaseSeconds", "nats", "natsReplicas", "natsBatch"])
        guard let (_, etcdNode) = keys["etcd"] else { throw fail(node, "cluster.etcd", "missing (etcd's client URLs)") }
        guard let (_, nodeIDNode) = keys["nodeId"] else { throw fail(node, "cluster.nodeId", "missing (this node's name)") }
        let items = try sequence(etcdNode, "cluster.etcd")
        guard !items.isEmpty else { throw fail(etcdNode, "cluster.etcd", "at least one URL is needed") }
        var urls: [String] = []
        for (index, item) in items.enumerated() {
            let url = try string(item, "cluster.etcd[\(index)]")
            if let problem = ClusterConfiguration.problem(url: url) { throw fail(item, "cluster.etcd[\(index)]", problem) }
            urls.append(url)
        }
        let nodeID = try string(nodeIDNode, "cluster.nodeId")
        if let problem = ClusterConfiguration.problem(nodeID: nodeID) { throw fail(nodeIDNode, "cluster.nodeId", problem) }
        var cluster = ClusterConfiguration(etcd: urls, nodeID: nodeID)
        if let (_, value) = keys["leaseSeconds"] {
            cluster.leaseSeconds = try int(value, "cluster.leaseSeconds", range: ClusterConfiguration.leaseSecondsRange)
        }
        if let (_, natsNode) = keys["nats"] {
            let items = try sequence(natsNode, "cluster.nats")
            guard !items.isEmpty else { throw fail(natsNode, "cluster.nats", "at least one URL is needed") }
            for (index, item) in items.enumerated() {
                let url = try string(item, "cluster.nats[\(index)]")
                if let problem = ClusterConfiguration.problem(natsURL: url) { throw fail(item, "cluster.nats[\(index)]", problem) }
                cluster.nats.append(url)
            }
        }
        if let (_, value) = keys["natsReplicas"] {
            guard !cluster.nats.isEmpty else { throw fail(value, "cluster.natsReplicas", "needs cluster.nats") }
            cluster.natsReplicas = try int(value, "cluster.natsReplicas", range: ClusterConfiguration.natsReplicasRange)
        }
        if let (_, value) = keys["natsBatch"] {
            guard !cluster.nats.isEmpty else { throw fail(value, "cluster.natsBatch", "needs cluster.nats") }
            cluster.natsBatch = try int(value, "cluster.natsBatch", range: ClusterConfiguration.natsBatchRange)
        }
        return cluster
    }
}
