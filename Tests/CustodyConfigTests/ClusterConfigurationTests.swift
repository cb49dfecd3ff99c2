import Foundation
import Testing

@testable import CustodyConfig

/// The `cluster:` section: etcd's URLs, the node id, the lease.
@Suite("Configuration file: cluster")
struct ClusterConfigurationTests {
    func parse(_ yaml: String) throws(ConfigurationError) -> CustodyConfiguration {
        try CustodyConfiguration.parse(yaml: yaml, file: "custody.yaml", baseDirectory: "/etc/custody")
    }

    @Test func theKeysReadAsWritten() throws {
        let config = try parse("""
            cluster:
              etcd: [http://10.0.0.1:2379, http://10.0.0.2:2379]
              nodeId: node-a
              leaseSeconds: 5
            """)
        #expect(config.cluster == ClusterConfiguration(
            etcd: ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], nodeID: "node-a", leaseSeconds: 5))
        #expect(try parse("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1}").cluster?.leaseSeconds == 10)
        #expect(try parse("").cluster == nil)
        let nats = try parse("""
            cluster:
              etcd: [http://10.0.0.1:2379]
              nodeId: node-a
              nats: [nats://10.0.0.1:4222, nats://10.0.0.2]
              natsReplicas: 3
              natsBatch: 1
            """).cluster
        #expect(nats?.nats == ["nats://10.0.0.1:4222", "nats://10.0.0.2"])
        #expect(nats?.natsReplicas == 3)
        #expect(nats?.natsBatch == 1)
        #expect(try parse("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1}").cluster?.natsBatch == 256)
        #expect(try parse("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1}").cluster?.nats == [])
    }

    @Test func badValuesAreNamedWithTheirKey() {
        for (yaml, key) in [
            ("cluster: {nodeId: n1}", "cluster.etcd"),
            ("cluster: {etcd: [http://127.0.0.1:2379]}", "cluster.nodeId"),
            ("cluster: {etcd: [], nodeId: n1}", "cluster.etcd"),
            ("cluster: {etcd: [127.0.0.1:2379], nodeId: n1}", "cluster.etcd[0]"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: 'a b'}", "cluster.nodeId"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, leaseSeconds: 1}", "cluster.leaseSeconds"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, lease: 5}", "lease"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, nats: []}", "cluster.nats"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, nats: [http://h:4222]}", "cluster.nats[0]"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, nats: [nats://h:4222], natsReplicas: 0}", "cluster.natsReplicas"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, natsReplicas: 3}", "cluster.natsReplicas"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, nats: [nats://h:4222], natsBatch: 0}", "cluster.natsBatch"),
            ("cluster: {etcd: [http://127.0.0.1:2379], nodeId: n1, natsBatch: 8}", "cluster.natsBatch"),
        ] {
            do {
                _ = try parse(yaml)
                Issue.record("accepted: \(yaml)")
            } catch {
                #expect("\(error)".contains(key), "\(yaml): \(error)")
            }
        }
    }
}
