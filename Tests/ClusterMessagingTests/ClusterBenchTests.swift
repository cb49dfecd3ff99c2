import CustodyTesting
import Foundation
import Testing

/// The final line of a `custody-bench` run as key=value pairs (units kept as printed).
func benchSummary(_ output: String) -> [String: String] {
    guard let last = output.split(separator: "\n").last else { return [:] }
    var result: [String: String] = [:]
    for part in last.split(separator: " ").dropFirst() {
        let pair = part.split(separator: "=", maxSplits: 1)
        if pair.count == 2 { result[String(pair[0])] = String(pair[1]) }
    }
    return result
}

extension MessagingSuites {
    @Suite("custody-bench in cluster mode, and nats-server's own rate")
    struct ClusterBenchTests {
        /// The benchmark's cluster mode: publishers on node 1, subscribers spread over the three
        /// nodes; every acknowledged QoS 1 message reaches every subscriber.
        @Test func publishAcrossThreeNodesLosesNothing() async throws {
            try await offPool {
                try withMessagingCluster("bench") { cluster in
                    let (status, out, err) = try run(product: "custody-bench", [
                        "publish", "--port", "\(cluster[0].port)", "--subscriber-ports", "\(cluster[1].port),\(cluster[2].port)",
                        "--qos", "1", "--publishers", "2", "--subscribers", "3", "--seconds", "1", "--rate", "1000",
                        "--max-ahead", "64",
                    ], timeout: 90)
                    #expect(status == 0, "\(err)")
                    let summary = benchSummary(out)
                    let published = Int(summary["published"] ?? "") ?? 0
                    #expect(published > 0, "\(out)")
                    #expect(summary["lost"] == "0", "\(out)")
                    #expect(summary["duplicates"] == "0", "\(out)")
                    #expect(Int(summary["delivered"] ?? "") == published * 3, "\(out)")
                }
            }
        }

        @Test func badSubscriberPortsAreNamed() async throws {
            try await offPool {
                let (status, _, err) = try run(product: "custody-bench", ["publish", "--subscriber-ports", "1883,x"])
                #expect(status != 0)
                #expect(err.contains("--subscriber-ports must be ports"), "\(err)")
            }
        }

        @Test(arguments: ["core", "jetstream"])
        func natsServersOwnRate(mode: String) async throws {
            try await offPool {
                let nats = try RunningNATS("bench-\(mode)")
                defer { nats.cleanUp() }
                let (status, out, err) = try run(product: "custody-bench", [
                    "nats-publish", "--url", nats.url, "--mode", mode, "--seconds", "1", "--inflight", "16",
                ], timeout: 60)
                #expect(status == 0, "\(err)")
                let summary = benchSummary(out)
                #expect((Int(summary["messages"] ?? "") ?? 0) > 0, "\(out)")
                #expect(summary["errors"] == "0", "\(out)")
                #expect(summary["rate"]?.hasSuffix("/s") == true, "\(out)")
            }
        }
    }
}
