import CustodyTesting
import Foundation
import LedgerCore
import SessionLedger
import Testing

extension ClusterSuites {
    @Suite("Cluster grants without a ledger fact", .serialized)
    struct TakeBackTests {
        /// A ledger (1 MiB map) filled with refused CONNECTs (empty client ids: R1) until it
        /// takes no more: no session is live in it, so a node's start on it ends none (which
        /// would make room), and its next event does not fit.
        static func fullLedger() async throws -> String {
            let directory = scratchDirectory("cluster-full")
            let ledger = try LMDBSessionLedger(directory: directory, mapSize: 1 << 20)
            defer { ledger.close() }
            let padding = String(repeating: "p", count: 100)
            for i in 0..<100_000 {
                let request = ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "device-\(i)-\(padding)"), sessionName: SessionName(unchecked: ""),
                    connection: ledger.nextConnectionNumber(), requestedExpiryInterval: 600)
                do { _ = try await ledger.claim(request) } catch { break }
            }
            return directory
        }

        @Test func aClaimEtcdGrantedButTheLedgerCouldNotRecordIsTakenBackInEtcd() async throws {
            let directory = try await Self.fullLedger()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try await offPool {
                try withCluster("take-back", nodes: 1) { cluster in
                    let full = try cluster.start(
                        node: "n2", directory: directory,
                        arguments: ["--ledger-map-size-mib", "1", "--retention-days", "0", "--retention-max-live-bytes", "0"])
                    cluster.add(full)
                    // etcd grants alice t1 on n2, whose ledger cannot record it: 0x88, and the
                    // grant goes back in etcd.
                    #expect(try connackCode(port: full.port, session: "t1", user: "alice") == 0x88)
                    let deadline = Date().addingTimeInterval(10)
                    while !full.stderr.contains("taken back"), Date() < deadline { usleep(50_000) }
                    #expect(full.stderr.contains("taken back"), "\(full.stderr)")
                    // So t1 is nobody's: another client gets it on n1 (0x87 if etcd still gave
                    // it to alice).
                    #expect(try connackCode(port: cluster[0].port, session: "t1", user: "bob") == 0)
                    // Nor does alice's slot stay taken: her ten slots are all hers on n1.
                    var held: [HeldSession] = []
                    defer { for session in held { session.kill() } }
                    for index in 0..<10 {
                        let session = try HeldSession(port: cluster[0].port, session: "a\(index)", user: "alice")
                        held.append(session)
                        try session.wait(for: "CONNACK (0)")
                    }
                }
            }
        }
    }
}
