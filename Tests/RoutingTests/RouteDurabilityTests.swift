import CustodyTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// What the routes keep across a stop (issue 21): QoS 0 messages' events are best-effort (in
// memory only), failed attempts are counted across a restart, and the ledger's lifecycle
// events are read again from the routes' cursor.

/// mosquitto_pub: one message `payload` on `topic` at `qos`.
private func publishOne(_ custody: RunningCustody, topic: String, payload: String, qos: Int, client: String) throws {
    let (status, out, err) = try run("/usr/bin/mosquitto_pub", [
        "-h", "127.0.0.1", "-p", "\(custody.port)", "-i", client, "-q", "\(qos)", "-t", topic, "-m", payload,
    ], timeout: 30)
    try #require(status == 0, "mosquitto_pub: \(out) \(err)")
}

/// The outbox as `custody-audit routes --json` lists it (custody stopped): one line an event.
private func outboxLines(_ directory: String) throws -> [Substring] {
    let (audited, listing, auditError) = try run(product: "custody-audit", [
        "routes", "--data-dir", directory, "--json", "--limit", "0",
    ])
    #expect(audited == 0, "\(auditError)")
    return listing.split(separator: "\n")
}

@Suite("Routes across a stop", .serialized)
struct RouteDurabilityTests {
    /// A QoS 0 message's event is routed (the receiver sees it) but never stored; a QoS 1
    /// message's is in the store before its PUBACK: after a stop only the QoS 1 event is
    /// left, and only it is delivered after the restart.
    @Test func qosZeroEventsAreBestEffort() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.answerByDefault("503")
            let (config, _) = try routesConfiguration("qos0", """
                  - name: ingest
                    topicFilters: ["t/#"]
                    endpoint: \(receiver.endpoint)
                    mode: batch
                    deadLetter: { directory: dead }
                """)
            let first = try startCustody("qos0", config: config)
            let directory = first.directory
            defer { first.cleanUp() }
            try publishOne(first, topic: "t/1", payload: "1", qos: 0, client: "p0")
            try receiver.waitFor { events($0).contains { $0["data"] as? Int == 1 } }
            try publishOne(first, topic: "t/1", payload: "2", qos: 1, client: "p1")
            first.stop()
            let lines = try outboxLines(directory)
            #expect(lines.count == 1, "only the QoS 1 event is stored: \(lines)")
            #expect(lines.first?.contains(#""number":2,"#) == true, "\(lines)")

            try receiver.answerByDefault("204")
            let before = try receiver.requests().count
            let second = try startCustody("qos0-2", config: config, directory: directory)
            defer { second.stop() }
            try receiver.waitFor { events(Array($0.dropFirst(before)), status: 204).count >= 1 }
            usleep(500_000)
            let after = events(Array(try receiver.requests().dropFirst(before)), status: 204)
            #expect(after.compactMap { $0["data"] as? Int } == [2], "the QoS 0 event went with the stop")
        }
    }

    /// maxAttempts 3: two attempts fail, custody is killed, and after the restart the third
    /// attempt is the last (dead-lettered with attempts=3), not a first one of three more.
    @Test func failedAttemptsAreCountedAcrossARestart() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.answerByDefault("429 2")
            let (config, directory) = try routesConfiguration("attempts", """
                  - name: ingest
                    topicFilters: ["t/#"]
                    endpoint: \(receiver.endpoint)
                    retry: { maxAttempts: 3 }
                    deadLetter: { directory: dead }
                """)
            let first = try startCustody("attempts", config: config)
            let data = first.directory
            defer { first.cleanUp() }
            try publishOne(first, topic: "t/1", payload: "7", qos: 1, client: "p1")
            try receiver.waitFor { $0.count >= 2 }
            usleep(500_000)  // the second failure written; the third attempt is 2 s away
            kill(first.process.processIdentifier, SIGKILL)
            first.process.waitUntilExit()
            #expect(try receiver.requests().count == 2)
            let lines = try outboxLines(data)
            #expect(lines.count == 1 && lines[0].contains(#""attempts":2"#), "\(lines)")

            let second = try startCustody("attempts-2", config: config, directory: data)
            defer { second.stop() }
            let dead = directory + "/dead"
            let deadline = Date().addingTimeInterval(20)
            // Finished entries only: an atomic write's temporary file (`.dat.nosync…`) is not one.
            func entries() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dead)) ?? []).filter { !$0.hasPrefix(".") } }
            while entries().isEmpty, Date() < deadline { usleep(50_000) }
            let files = entries()
            try #require(files.count == 1, "\(files)")
            let entry = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dead + "/" + files[0]))) as? [String: Any])
            #expect(entry["reason"] as? String == "maxAttempts")
            #expect(entry["attempts"] as? Int == 3)
            #expect(try receiver.requests().count == 3, "two attempts before the kill, one after")
        }
    }

    /// Numbers are not kept once an event is delivered or dead-lettered; after a restart a
    /// route numbers its events after its dead-letter directory's entries, so that none is
    /// written over.
    @Test func deadLetterEntriesOutliveARestart() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.answerByDefault("400")
            let (config, directory) = try routesConfiguration("dead-restart", """
                  - name: ingest
                    topicFilters: ["t/#"]
                    endpoint: \(receiver.endpoint)
                    deadLetter: { directory: dead }
                """)
            let dead = directory + "/dead"
            // Finished entries only: an atomic write's temporary file (`.dat.nosync…`) is not one.
            func entries() -> [String] {
                ((try? FileManager.default.contentsOfDirectory(atPath: dead)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
            }
            func waitForEntries(_ count: Int) {
                let deadline = Date().addingTimeInterval(20)
                while entries().count < count, Date() < deadline { usleep(50_000) }
            }
            let first = try startCustody("dead-restart", config: config)
            let data = first.directory
            defer { first.cleanUp() }
            try publishOne(first, topic: "t/1", payload: "1", qos: 1, client: "p1")
            waitForEntries(1)
            first.stop()
            let second = try startCustody("dead-restart-2", config: config, directory: data)
            defer { second.stop() }
            try publishOne(second, topic: "t/1", payload: "2", qos: 1, client: "p1")
            waitForEntries(2)
            let names = entries()
            #expect(names == ["ingest-00000000000000000001.json", "ingest-00000000000000000002.json"], "\(names)")
            let payloads = try names.map { name -> Int? in
                let entry = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dead + "/" + name))) as? [String: Any]
                return (entry?["event"] as? [String: Any])?["data"] as? Int
            }
            #expect(payloads == [1, 2])
        }
    }

    /// Lifecycle events the routes did not take (here: committed while custody ran without
    /// routes) are read from the ledger at the next start with routes, after the routes'
    /// cursor: each ledger event is routed once.
    @Test func lifecycleEventsAreReadAgainFromTheRoutesCursor() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            let (config, directory) = try routesConfiguration("cursor", """
                  - name: events
                    lifecycleEvents: true
                    endpoint: \(receiver.endpoint)
                    mode: batch
                    deadLetter: { directory: dead }
                """)
            let bare = directory + "/bare.yaml"
            try "namespace: { name: plant-ns }\n".write(toFile: bare, atomically: true, encoding: .utf8)
            let first = try startCustody("cursor", config: config)
            let data = first.directory
            defer { first.cleanUp() }
            try publishOne(first, topic: "t/1", payload: "1", qos: 1, client: "seen-1")
            try receiver.waitFor { events($0).filter { ($0["type"] as? String)?.hasSuffix("Disconnected") == true }.count >= 1 }
            first.stop()

            let without = try startCustody("cursor-bare", config: bare, directory: data)
            try publishOne(without, topic: "t/1", payload: "1", qos: 1, client: "missed-1")
            without.stop()

            let third = try startCustody("cursor-3", config: config, directory: data)
            defer { third.stop() }
            #expect(third.stdout.contains("ledger events read again"), "\(third.stdout)")
            let requests = try receiver.waitFor { requests in
                events(requests).contains {
                    ($0["data"] as? [String: Any])?["clientSessionName"] as? String == "missed-1"
                        && ($0["type"] as? String)?.hasSuffix("Disconnected") == true
                }
            }
            usleep(500_000)
            let routed = events(try receiver.requests(), status: 204).compactMap { $0["custodyseq"] as? Int }
            #expect(routed.count == Set(routed).count, "each ledger event once: \(routed)")
            let sessions = Set(events(requests).compactMap { ($0["data"] as? [String: Any])?["clientSessionName"] as? String })
            #expect(sessions.isSuperset(of: ["seen-1", "missed-1"]), "\(sessions)")
            #expect(routed == routed.sorted(), "in the ledger's order: \(routed)")
        }
    }
}
