import CustodyTesting
import Foundation
import Testing

extension MessagingSuites {
    @Suite("Wills of sessions whose node was killed")
    struct LostNodeWillTests {
        /// Three sessions with wills are connected on node 2, a subscriber to the wills' topics
        /// on node 1; node 2 is killed (SIGKILL), so it cannot send them. Once its lease lapses,
        /// the node that records the sessions as lost publishes their wills to the cluster: at
        /// once without a Will Delay Interval, after it with one, and never for a session that
        /// its client resumed (on node 3) within the delay.
        @Test func willsOfAKilledNodesSessionsArePublishedByASurvivor() async throws {
            try await offPool {
                try withMessagingCluster("lost-wills") { cluster in
                    let watcher = try PahoClient.subscriber(port: cluster[0].port, id: "watcher", filters: ["will/#"])
                    let clients = [
                        ("now", ["--clean", "1"]),
                        ("later", ["--clean", "0", "--expiry", "3600", "--will-delay", "3"]),
                        ("resumed", ["--clean", "0", "--expiry", "3600", "--will-delay", "6"]),
                    ].map { id, options in
                        (id, try? PahoClient(port: cluster[1].port, id: id, options + ["--will-topic", "will/\(id)", "--will-payload", "gone-\(id)"]))
                    }
                    for (_, client) in clients { try #require(client).spawned.waitForOutput(containing: "CONNACK rc=0", timeout: 30) }
                    // Their records (with the wills) are written after the CONNACK.
                    Thread.sleep(forTimeInterval: 1)
                    cluster.killNode(1)
                    let killedAt = Date()
                    try watcher.wait(timeout: 30) { $0.payloads.contains("gone-now") }
                    // Its client comes back on node 3 within the 6 s delay.
                    let resumed = try PahoClient(port: cluster[2].port, id: "resumed", ["--clean", "0", "--expiry", "3600"])
                    try resumed.spawned.waitForOutput(containing: "CONNACK rc=0 present=1", timeout: 30)
                    try watcher.wait(timeout: 30) { $0.payloads.contains("gone-later") }
                    let laterAfter = Date().timeIntervalSince(killedAt)
                    print("wills of a killed node: 'now' and 'later' published; 'later' \(String(format: "%.1f", laterAfter)) s after the kill")
                    // The lease (2 s) lapses, then the 3 s delay runs.
                    #expect(laterAfter >= 3)
                    // Past the resumed session's delay (lease and 6 s) with a margin.
                    Thread.sleep(forTimeInterval: max(0, 11 - Date().timeIntervalSince(killedAt)))
                    #expect(watcher.messages.filter { $0.hasPrefix("will/now ") } == ["will/now gone-now q1 r0"])
                    #expect(watcher.messages.filter { $0.hasPrefix("will/later ") } == ["will/later gone-later q1 r0"])
                    #expect(!watcher.payloads.contains("gone-resumed"))
                    for (_, client) in clients { client?.stop() }
                    resumed.stop()
                    watcher.stop()
                }
            }
        }

        /// Started again at once, before its lease lapses, the killed node ends its sessions'
        /// connections itself, and sends their wills from its store; or, when a survivor was
        /// quicker, the survivor does. Either way each will goes once.
        @Test func aKilledNodeStartedAgainAtOnceSendsEachWillOnce() async throws {
            try await offPool {
                try withMessagingCluster("lost-wills-quick") { cluster in
                    let watcher = try PahoClient.subscriber(port: cluster[0].port, id: "watcher", filters: ["will/#"])
                    let client = try PahoClient(port: cluster[1].port, id: "quick", [
                        "--clean", "0", "--expiry", "3600", "--will-delay", "2", "--will-topic", "will/quick", "--will-payload", "gone-quick",
                    ])
                    try client.spawned.waitForOutput(containing: "CONNACK rc=0", timeout: 30)
                    Thread.sleep(forTimeInterval: 1)
                    cluster.killNode(1)
                    client.stop()
                    try cluster.restartNode(1)
                    try watcher.wait(timeout: 30) { $0.payloads.contains("gone-quick") }
                    Thread.sleep(forTimeInterval: 6)
                    #expect(watcher.messages.filter { $0.hasPrefix("will/quick ") } == ["will/quick gone-quick q1 r0"], "\(watcher.messages)")
                    watcher.stop()
                }
            }
        }

        /// The killed node, started again on its data, finds in its store the wills of the
        /// sessions that were connected when it died. A survivor has published them (or will,
        /// after their delay), and a resumed one lives on another node now: the restarted
        /// node publishes none of them again.
        @Test func aKilledNodeStartedAgainDoesNotRepeatTheirWills() async throws {
            try await offPool {
                try withMessagingCluster("lost-wills-restart") { cluster in
                    let watcher = try PahoClient.subscriber(port: cluster[0].port, id: "watcher", filters: ["will/#"])
                    let clients = [
                        ("now", ["--clean", "1"]),
                        ("later", ["--clean", "0", "--expiry", "3600", "--will-delay", "2"]),
                        ("resumed", ["--clean", "0", "--expiry", "3600", "--will-delay", "4"]),
                    ].map { id, options in
                        (id, try? PahoClient(port: cluster[1].port, id: id, options + ["--will-topic", "will/\(id)", "--will-payload", "gone-\(id)"]))
                    }
                    for (_, client) in clients { try #require(client).spawned.waitForOutput(containing: "CONNACK rc=0", timeout: 30) }
                    Thread.sleep(forTimeInterval: 1)
                    cluster.killNode(1)
                    for (_, client) in clients { client?.stop() }
                    let resumed = try PahoClient(port: cluster[2].port, id: "resumed", ["--clean", "0", "--expiry", "3600"])
                    try resumed.spawned.waitForOutput(containing: "CONNACK rc=0 present=1", timeout: 30)
                    try watcher.wait(timeout: 30) { $0.payloads.contains("gone-now") && $0.payloads.contains("gone-later") }
                    try cluster.restartNode(1)
                    // Past every delay the restarted node could count from its start, with a margin.
                    Thread.sleep(forTimeInterval: 8)
                    #expect(watcher.messages.filter { $0.hasPrefix("will/now ") } == ["will/now gone-now q1 r0"], "\(watcher.messages)")
                    #expect(watcher.messages.filter { $0.hasPrefix("will/later ") } == ["will/later gone-later q1 r0"], "\(watcher.messages)")
                    #expect(!watcher.payloads.contains("gone-resumed"), "\(watcher.messages)")
                    resumed.stop()
                    watcher.stop()
                }
            }
        }
    }
}
