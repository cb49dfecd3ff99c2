import CustodyTesting
import Foundation
import LedgerCore
import Testing

extension ClusterSuites {
    /// Three custody nodes on a three-member etcd cluster: a member stopped and started again
    /// while CONNECTs keep coming on every node.
    @Suite("Three nodes on a three-member etcd", .serialized)
    struct EtcdClusterTests {
        @Test func aMemberStoppedAndRestartedDuringAConnectStorm() async throws {
            try await offPool {
                try withCluster("storm", leaseSeconds: 10, etcdMembers: 3) { cluster in
                    let storms = try (0..<3).map { index in
                        try SpawnedProcess(try builtProduct("custody-bench").path, [
                            "connect", "--port", "\(cluster[index].port)", "--conns", "8", "--seconds", "6",
                            "--prefix", "storm\(index)-",
                        ])
                    }
                    usleep(1_500_000)
                    // The first member (each node's first endpoint) goes, then comes back with its data.
                    cluster.etcd.stop(member: 0)
                    usleep(2_000_000)
                    try cluster.etcd.start(member: 0)
                    var totals: [(ok: Int, errors: Int)] = []
                    for storm in storms {
                        let text = try storm.waitForOutput(containing: "connect: cycles=", timeout: 60)
                        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("connect: ") }) else { continue }
                        func value(_ name: String) -> Int {
                            line.split(separator: " ").first { $0.hasPrefix(name + "=") }.flatMap { Int($0.dropFirst(name.count + 1)) } ?? -1
                        }
                        totals.append((value("ok"), value("errors")))
                    }
                    // Every node kept granting through the member's absence (a few CONNECTs may have
                    // waited out an election and been refused 0x88: nothing granted for those).
                    #expect(totals.count == 3)
                    for total in totals { #expect(total.ok > 50, "\(totals)") }
                    // After it: every node serves, and the member is back in the cluster.
                    for index in 0..<3 {
                        #expect(try connackCode(port: cluster[index].port, session: "after-\(index)", user: "zed") == 0)
                    }
                    try cluster.etcd.waitUntilHealthy(0)
                    for index in 0..<3 { cluster[index].stop() }
                    let dirs = (0..<3).flatMap { ["--data-dir", cluster[$0].directory] }
                    let (status, out, _) = try run(product: "custody-audit", ["verify", "--cluster"] + dirs, timeout: 120)
                    #expect(status == 0, "\(out)")
                    #expect(out.contains("no session had two owners at once"))
                }
            }
        }
    }
}
