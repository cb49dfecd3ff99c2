import CustodyTesting
import Foundation
import NATSClient
import Testing

extension MessagingSuites {
    @Suite("Persistent sessions moving between custody nodes")
    struct SessionMoveTests {
        /// A persistent session (clean start 0, expiry 3600) subscribes on node 1 and goes
        /// away; 1,000 QoS 1 messages are published on node 1 meanwhile (queued there). It
        /// resumes on node 3 without subscribing: session present, every message there, in
        /// order; its subscription goes on working on node 3 for messages published on node 2.
        /// It then resumes on node 3 again (the local path) and moves back to node 1 (whose
        /// stale copy of it was dropped), each time getting what was published meanwhile.
        @Test func persistentSessionMovesWithAThousandQueuedMessages() async throws {
            try await offPool {
                // Queues long enough for the 1,000 and the live streams (1,000 by default: the
                // oldest would be dropped).
                try withMessagingCluster("session-move", extra: ["--queue-max-messages", "100000"]) { cluster in
                    func resume(_ node: Int, _ subscribe: [String] = []) throws -> PahoClient {
                        let client = try PahoClient(
                            port: cluster[node].port, id: "mover",
                            ["--qos", "1", "--clean", "0", "--expiry", "3600"] + subscribe.flatMap { ["--sub", $0] })
                        try client.spawned.waitForOutput(containing: "CONNACK", timeout: 30)
                        return client
                    }
                    let first = try resume(0, ["q/#"])
                    try first.spawned.waitForOutput(containing: "SUBACK", timeout: 20)
                    first.stop()
                    // Detached on node 1 (and its record written).
                    Thread.sleep(forTimeInterval: 1)
                    let publisher = try PahoClient.publisher(port: cluster[0].port, id: "pub-1", topic: "q/x", count: 1_000, qos: 1, prefix: "m")
                    try publisher.spawned.waitForOutput(containing: "DONE", timeout: 120)
                    #expect(publisher.acknowledged.count == 1_000)

                    // Streams go on while it moves: from node 2 (node 3 takes them from its
                    // consumer) and from node 3 itself (routed there as they come).
                    let streams = [(1, "two"), (2, "three")].map { node, prefix in
                        (prefix, try? PahoClient.publisher(port: cluster[node].port, id: "live-\(prefix)", topic: "q/live", count: 2_000, qos: 1, prefix: prefix))
                    }
                    for (_, stream) in streams { try #require(stream).wait(timeout: 60) { $0.acknowledged.count >= 100 } }
                    let moved = try resume(2)
                    #expect(moved.lines.contains("CONNACK rc=0 present=1"))
                    let expected = (0..<1_000).map { "m-\($0)" }
                    do {
                        try moved.wait(timeout: 60) { Set($0.payloads).isSuperset(of: expected) }
                    } catch {
                        let missing = Set(expected).subtracting(moved.payloads)
                        Issue.record("\(missing.count) queued messages missing: \(missing.sorted().prefix(20)); received \(moved.payloads.count)")
                        throw error
                    }
                    let received = moved.payloads.filter { $0.hasPrefix("m-") }
                    print("session moved n1 -> n3: published 1000, received \(received.count), lost \(Set(expected).subtracting(received).count), duplicates \(received.count - Set(received).count)")
                    #expect(firstOccurrences(received) == expected)
                    // Every message of the live streams that was PUBACKed reaches it: those before
                    // the move from the stream, the others as they come.
                    for (prefix, stream) in streams {
                        let stream = try #require(stream)
                        try stream.spawned.waitForOutput(containing: "DONE", timeout: 120)
                        let acknowledged = stream.acknowledged
                        do {
                            try moved.wait(timeout: 60) { Set($0.payloads).isSuperset(of: acknowledged) }
                        } catch {
                            let missing = Set(acknowledged).subtracting(moved.payloads)
                            Issue.record("\(prefix): \(missing.count) acknowledged messages missing: \(missing.sorted().prefix(20))")
                            throw error
                        }
                        let got = moved.payloads.filter { $0.hasPrefix(prefix + "-") }
                        print("live stream from \(prefix) during the move: acknowledged \(acknowledged.count), received \(got.count), duplicates \(got.count - Set(got).count), in order \(firstOccurrences(got) == (0..<2_000).map { "\(prefix)-\($0)" })")
                        #expect(acknowledged.count == 2_000)
                        // Node 2's, taken by node 3's consumer, keep their order.
                        if prefix == "two" { #expect(firstOccurrences(got) == (0..<2_000).map { "two-\($0)" }) }
                    }
                    // Its subscription, kept by the session, works on node 3.
                    let later = try PahoClient.publisher(port: cluster[1].port, id: "pub-2", topic: "q/y", count: 5, qos: 1, prefix: "new")
                    try later.spawned.waitForOutput(containing: "DONE", timeout: 30)
                    try moved.wait { $0.payloads.filter { $0.hasPrefix("new-") }.count >= 5 }
                    #expect(moved.payloads.filter { $0.hasPrefix("new-") } == (0..<5).map { "new-\($0)" })
                    // Past the hand-over margin: nothing it acknowledged comes again below.
                    Thread.sleep(forTimeInterval: 2.5)
                    moved.stop()

                    /// Ten messages published on node 2 while it is away, then a resume on `node`:
                    /// those ten, and nothing it had before.
                    func offlineThenResume(on node: Int, _ prefix: String) throws {
                        let offline = try PahoClient.publisher(port: cluster[1].port, id: "pub-\(prefix)", topic: "q/\(prefix)", count: 10, qos: 1, prefix: prefix)
                        try offline.spawned.waitForOutput(containing: "DONE", timeout: 30)
                        let client = try resume(node)
                        #expect(client.lines.contains("CONNACK rc=0 present=1"))
                        try client.wait { $0.payloads.count >= 10 }
                        // Past the hand-over margin before it goes again.
                        Thread.sleep(forTimeInterval: 2.5)
                        #expect(client.payloads == (0..<10).map { "\(prefix)-\($0)" })
                        client.stop()
                    }
                    // Back on node 3: its own copy, as on one node.
                    try offlineThenResume(on: 2, "again")
                    // Back to node 1, which held a stale copy (the 1,000 it queued): only what came since.
                    try offlineThenResume(on: 0, "back")
                }
            }
        }

        /// A persistent session connected on node 1 has received (and acknowledged) 300
        /// messages when its client connects again on node 3 (a takeover while node 1 still
        /// holds it): node 1 answers what the session still waits for, so the 300 do not come
        /// again (its record alone dates from the attach on node 1); what is published after
        /// reaches it on node 3.
        @Test func takeoverFromALiveNodeBringsNoOldMessagesAgain() async throws {
            try await offPool {
                try withMessagingCluster("session-takeover") { cluster in
                    let first = try PahoClient(port: cluster[0].port, id: "taken", ["--qos", "1", "--clean", "0", "--expiry", "3600", "--sub", "k/#"])
                    try first.spawned.waitForOutput(containing: "SUBACK", timeout: 30)
                    let publisher = try PahoClient.publisher(port: cluster[1].port, id: "pub-old", topic: "k/a", count: 300, qos: 1, prefix: "old")
                    try publisher.spawned.waitForOutput(containing: "DONE", timeout: 60)
                    try first.wait { $0.payloads.count >= 300 }
                    // Past the hand-over margin (2 s) after the last one.
                    Thread.sleep(forTimeInterval: 3)
                    let second = try PahoClient(port: cluster[2].port, id: "taken", ["--qos", "1", "--clean", "0", "--expiry", "3600"])
                    try second.spawned.waitForOutput(containing: "CONNACK rc=0 present=1", timeout: 30)
                    try first.wait { $0.lines.contains("DISCONNECT rc=142") }
                    let after = try PahoClient.publisher(port: cluster[1].port, id: "pub-new", topic: "k/b", count: 10, qos: 1, prefix: "new")
                    try after.spawned.waitForOutput(containing: "DONE", timeout: 30)
                    try second.wait { $0.payloads.filter { $0.hasPrefix("new-") }.count >= 10 }
                    Thread.sleep(forTimeInterval: 0.5)
                    #expect(first.payloads == (0..<300).map { "old-\($0)" })
                    #expect(second.payloads == (0..<10).map { "new-\($0)" }, "old again: \(second.payloads.filter { $0.hasPrefix("old-") }.count)")
                    second.stop()
                }
            }
        }

        /// The cluster keeps a persistent session's record in JetStream while it lives; when
        /// the ledger expires the session, the record is deleted (looked up with the JetStream
        /// API). A clean start of a moved session deletes it too.
        @Test func expiryDeletesTheSessionsJetStreamState() async throws {
            let cluster = try await offPool { try MessagingCluster("session-expiry") }
            defer { cluster.cleanUp() }
            let natsURL = cluster.nats.urls[0]
            try await offPool {
                for (node, id, expiry) in [(0, "short", "3"), (1, "cleaned", "3600")] {
                    let client = try PahoClient(
                        port: cluster[node].port, id: id, ["--qos", "1", "--clean", "0", "--expiry", expiry, "--sub", "e/#"])
                    try client.spawned.waitForOutput(containing: "SUBACK", timeout: 30)
                    client.stop()
                }
                Thread.sleep(forTimeInterval: 0.5)
            }
            #expect(try await sessionRecord(natsURL, "short") != nil)
            #expect(try await sessionRecord(natsURL, "cleaned") != nil)
            // "cleaned" starts again clean on node 3: its old record goes.
            try await offPool {
                let client = try PahoClient(port: cluster[2].port, id: "cleaned", ["--qos", "1", "--clean", "1"])
                try client.spawned.waitForOutput(containing: "CONNACK rc=0 present=0", timeout: 30)
                client.stop()
            }
            // "short" expires 3 s after it went (the expiring node checks every second).
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, try await sessionRecord(natsURL, "short") != nil {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await sessionRecord(natsURL, "short") == nil, "\(cluster.outputs)")
            #expect(try await sessionRecord(natsURL, "cleaned") == nil)
        }
    }
}

/// Each payload at its first arrival (QoS 1 may bring one again later).
func firstOccurrences(_ payloads: [String]) -> [String] {
    var seen = Set<String>()
    return payloads.filter { seen.insert($0).inserted }
}

/// The session's record in the cluster's JetStream (`CUSTODY_SESSIONS`, subject
/// `custody.s.<hex of the name>`): its payload, nil when there is none.
func sessionRecord(_ natsURL: String, _ session: String) async throws -> String? {
    let connection = try await NATSConnection.connect(NATSOptions(servers: [NATSServer(url: natsURL)!]))
    let hex = session.utf8.map { String(format: "%02X", $0) }.joined()
    do {
        let stored = try await JetStream(connection).lastMessage(stream: "CUSTODY_SESSIONS", subject: "custody.s." + hex)
        await connection.close()
        return stored.map { String(decoding: $0.data, as: UTF8.self) }
    } catch {
        await connection.close()
        throw error
    }
}
