import CustodyTesting
import Foundation
import LedgerCore
import SessionLedger
import Testing

extension ClusterSuites {
    /// `custody-audit` on several nodes' ledgers: one history merged by epoch.
    @Suite("custody-audit across nodes", .serialized)
    struct ClusterAuditTests {
        @Test func theMergedHistoryOfATakeoverAndAKilledNode() async throws {
            try await offPool {
                var directories: [String] = []
                try withCluster("audit", leaseSeconds: 2) { cluster in
                    directories = (0..<3).map { cluster[$0].directory }
                    let first = try HeldSession(port: cluster[0].port, session: "a1", user: "alice")
                    defer { first.kill() }
                    try first.wait(for: "CONNACK (0)")
                    #expect(try connackCode(port: cluster[1].port, session: "a1", user: "bob") == 0x87)
                    let second = try HeldSession(port: cluster[2].port, session: "a1", user: "alice")
                    defer { second.kill() }
                    try second.wait(for: "CONNACK (0)")
                    try first.wait(for: "Received DISCONNECT (142)")
                    try waitForEvent(cluster[0]) { $0.kind == .disconnected(.sessionTakenOver) }
                    // n3 dies with a1 connected: a survivor records it lost after the lease.
                    cluster.killNode(2)
                    second.kill()
                    let deadline = Date().addingTimeInterval(15)
                    while try !(cluster[0].events() + cluster[1].events()).contains(where: { $0.kind == .disconnected(.connectionLost) }),
                        Date() < deadline
                    {
                        usleep(50_000)
                    }
                    cluster[0].stop()
                    cluster[1].stop()
                    let dirs = directories.flatMap { ["--data-dir", $0] }
                    let names = directories.map { ($0 as NSString).lastPathComponent }

                    let (status, history, error) = try run(product: "custody-audit", ["history", "--session", "a1", "--json"] + dirs)
                    #expect(status == 0, "\(error)")
                    let lines = history.split(separator: "\n").map(String.init)
                    func field(_ line: String, _ name: String) -> String? {
                        guard let range = line.range(of: "\"\(name)\":") else { return nil }
                        return String(line[range.upperBound...].prefix { $0 != "," && $0 != "}" }).replacingOccurrences(of: "\"", with: "")
                    }
                    // connected (n1), rejected (n2), taken over (n1) and connected (n3) at one epoch, lost (a survivor).
                    let kinds = lines.map { "\(field($0, "kind")!)/\(field($0, "reason")!)@\(field($0, "node")!)" }
                    #expect(kinds.count == 5, "\(history)")
                    #expect(kinds.prefix(4) == [
                        "connected/null@\(names[0])", "rejected/ownedByAnotherClient@\(names[1])",
                        "disconnected/sessionTakenOver@\(names[0])", "connected/null@\(names[2])",
                    ], "\(history)")
                    #expect(kinds.last?.hasPrefix("disconnected/connectionLost@") == true)
                    let epochs = lines.compactMap { field($0, "epoch").flatMap { UInt64($0) } }
                    #expect(epochs == epochs.sorted())
                    #expect(epochs[2] == epochs[3])

                    let (verified, verifyOut, _) = try run(product: "custody-audit", ["verify", "--cluster"] + dirs)
                    #expect(verified == 0, "\(verifyOut)")
                    #expect(verifyOut.contains("verify: ok cluster nodes=3"))

                    let (owned, ownerOut, _) = try run(product: "custody-audit", ["owner", "--session", "a1", "--json"] + dirs)
                    #expect(owned == 0)
                    #expect(ownerOut.contains("\"state\":\"disconnected\"") && ownerOut.contains("\"owner\":\"alice\""), "\(ownerOut)")

                    let (listed, sessionsOut, _) = try run(product: "custody-audit", ["sessions"] + dirs)
                    #expect(listed == 0)
                    #expect(sessionsOut.contains("1 live session"), "\(sessionsOut)")

                    let (exported, exportOut, _) = try run(product: "custody-audit", ["export"] + dirs)
                    #expect(exported == 0)
                    #expect(exportOut.split(separator: "\n").count >= 5)
                }
            }
        }

        @Test func verifyClusterFindsTwoOwnersAtOnce() async throws {
            try await offPool {
                let nodes = [scratchDirectory("audit-overlap-a"), scratchDirectory("audit-overlap-b")]
                defer { for node in nodes { try? FileManager.default.removeItem(atPath: node) } }
                func connected(_ connection: UInt64, epoch: UInt64) -> LedgerEvent {
                    LedgerEvent(
                        kind: .connected, authenticationName: AuthenticationName(unchecked: "alice"),
                        sessionName: SessionName(unchecked: "twice"), connection: connection, protocolVersion: .mqtt5,
                        cleanStart: false, expiryInterval: 60, epoch: epoch)
                }
                // Two nodes each think they granted the session, neither interval ended: a split brain.
                for (index, node) in nodes.enumerated() {
                    let ledger = try LMDBSessionLedger(directory: node)
                    let recorded = try awaitResult { done in ledger.record([connected(UInt64(index + 1), epoch: UInt64(5 + index))], done) }
                    #expect(recorded.count == 1)
                    ledger.close()
                }
                let dirs = nodes.flatMap { ["--data-dir", $0] }
                let (status, out, _) = try run(product: "custody-audit", ["verify", "--cluster"] + dirs)
                #expect(status == 1)
                #expect(out.contains("verify: FAILED cluster session twice connected on"), "\(out)")
                // Each ledger on its own is intact.
                #expect(out.components(separatedBy: "verify: ok node=").count == 3, "\(out)")
            }
        }
    }
}

/// Waits for a callback API's answer on this (blocking) thread.
func awaitResult<T: Sendable>(_ body: (@escaping @Sendable (Result<T, LedgerError>) -> Void) -> Void) throws -> T {
    let semaphore = DispatchSemaphore(value: 0)
    let box = ResultBox<T>()
    body { result in
        box.set(result)
        semaphore.signal()
    }
    semaphore.wait()
    return try box.get()
}

final class ResultBox<T: Sendable>: @unchecked Sendable {
    private var result: Result<T, LedgerError>?
    private let lock = NSLock()
    func set(_ value: Result<T, LedgerError>) { lock.withLock { result = value } }
    func get() throws -> T { try lock.withLock { result! }.get() }
}
