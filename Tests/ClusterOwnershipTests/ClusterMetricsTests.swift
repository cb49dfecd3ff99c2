import CustodyTesting
import Foundation
import LedgerCore
import Testing

extension ClusterSuites {
    @Suite("A cluster node's metrics", .serialized)
    struct ClusterMetricsTests {
        /// One series of a node's /metrics (name and labels as Prometheus prints them).
        static func series(_ node: RunningCustody, _ name: String) throws -> Int? {
            guard let line = node.stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: metrics http://") }) else {
                throw TestFailure.unexpected("no metrics line: \(node.stdout)")
            }
            let text = try run("/usr/bin/curl", ["-s", String(line.dropFirst("custody: metrics ".count))]).1
            for row in text.split(separator: "\n") where row.hasPrefix(name + " ") {
                return Double(row.dropFirst(name.count + 1)).map { Int($0) }
            }
            return nil
        }

        @Test func theSessionGaugesCountEveryNodesSessionsAsEtcdHoldsThem() async throws {
            try await offPool {
                try withCluster("metrics", extra: ["--metrics", "127.0.0.1:0"]) { cluster in
                    let held = try HeldSession(port: cluster[1].port, session: "m1", user: "alice")
                    defer { held.kill() }
                    try held.wait(for: "CONNACK (0)")
                    // One waiting to expire, left on n3.
                    #expect(try connackCode(port: cluster[2].port, session: "m2", user: "bob") == 0)
                    let connected = "custody_sessions_live{state=\"connected\"}"
                    let disconnected = "custody_sessions_live{state=\"disconnected\"}"
                    // n1 holds none of them itself; its gauges show the cluster's.
                    let deadline = Date().addingTimeInterval(10)
                    var seen: (Int?, Int?) = (nil, nil)
                    while Date() < deadline {
                        seen = (try Self.series(cluster[0], connected), try Self.series(cluster[0], disconnected))
                        if seen == (1, 1) { break }
                        usleep(100_000)
                    }
                    #expect(seen.0 == 1 && seen.1 == 1, "\(seen)")
                }
            }
        }
    }
}
