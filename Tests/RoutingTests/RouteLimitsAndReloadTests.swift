import CustodyTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Routes end to end, continued: HTTP publish routed with the client's attributes, a full
// outbox dead-lettering to a topic, and SIGHUP replacing the routes.

@Suite("Routes: limits, HTTP publish and reload", .serialized)
struct RouteLimitsAndReloadTests {
    /// HTTP publishes are routed like MQTT ones, with the registry's attributes as
    /// enrichments; past `limits.maxEvents` the outbox sends new events to the dead-letter
    /// topic, and what it held is delivered once the endpoint recovers.
    @Test func aFullOutboxDeadLettersToATopicAndHTTPPublishIsRouted() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.answerByDefault("503")
            let directory = scratchDirectory("routes-full")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (index, user) in ["backend", "reader"].enumerated() {
                let (status, _, err) = try run(
                    "/usr/bin/mosquitto_passwd", (index == 0 ? ["-c"] : []) + ["-b", directory + "/passwords", user, "pw"])
                try #require(status == 0, "mosquitto_passwd: \(err)")
            }
            let config = directory + "/custody.yaml"
            try """
                passwordFile: passwords
                eventSubscribers: [reader]
                clients:
                  - { authenticationName: backend, attributes: { area: a1 } }
                  - { authenticationName: reader }
                routes:
                  - name: full
                    topicFilters: ["plant/#"]
                    endpoint: \(receiver.endpoint)
                    retry: { maxAttempts: 100 }
                    limits: { maxEvents: 2 }
                    enrichments: { static: { site: p7 }, fromClientAttributes: [area] }
                    deadLetter: { topic: "$custody/deadletter/full" }
                """.write(toFile: config, atomically: true, encoding: .utf8)
            let port = try freeLoopbackPort()
            let custody = try startCustody("full", config: config, ["--listen-http", "127.0.0.1:\(port)"])
            defer { custody.cleanUp() }
            try custody.waitForOutput(containing: "custody: listening http", timeout: 20)
            let reader = ["-h", "127.0.0.1", "-p", "\(custody.port)", "-V", "5", "-u", "reader", "-P", "pw", "-i", "dl",
                          "-c", "-x", "3600", "-q", "1", "-t", "$custody/deadletter/full"]
            let (subscribed, _, subscribeError) = try run("/usr/bin/mosquitto_sub", reader + ["-E"], timeout: 15)
            try #require(subscribed == 0, "\(subscribeError)")
            for n in 1...5 {
                let answer = try curlPost(
                    "http://127.0.0.1:\(port)/mqtt/messages?topic=plant/line1", user: "backend:pw",
                    headers: ["mqtt-qos: 1"], body: "\(n)")
                #expect(answer.status == 204, "\(answer)")
            }
            let (read, out, readError) = try run("/usr/bin/mosquitto_sub", reader + ["-C", "3", "-W", "10"], timeout: 20)
            #expect(read == 0, "\(readError)")
            let entries = out.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            #expect(entries.count == 3, "\(out)")
            for (entry, n) in zip(entries, 3...5) {
                #expect(entry["reason"] as? String == "outboxFull")
                #expect(entry["route"] as? String == "full")
                let event = entry["event"] as? [String: Any] ?? [:]
                #expect(event["data"] as? Int == n)
                #expect(event["mqttclientauthname"] as? String == "backend")
                #expect(event["area"] as? String == "a1")
                #expect(event["site"] as? String == "p7")
            }
            try receiver.answerByDefault("204")
            let requests = try receiver.waitFor { events($0, status: 204).count >= 2 }
            #expect(events(requests, status: 204).map { $0["data"] as? Int } == [1, 2])
            #expect(events(requests, status: 204).allSatisfy { $0["area"] as? String == "a1" })
        }
    }

    /// SIGHUP: a route's new endpoint takes its events from then on; a new route starts.
    @Test func sighupReplacesTheRoutes() async throws {
        try await offPool {
            let first = try TestEventReceiver()
            defer { first.stop() }
            let second = try TestEventReceiver()
            defer { second.stop() }
            let route = { (endpoint: String, name: String) in
                """
                  - name: \(name)
                    topicFilters: ["t/#"]
                    endpoint: \(endpoint)
                    deadLetter: { directory: dead }
                """
            }
            let (config, _) = try routesConfiguration("reload", route(first.endpoint, "a"))
            let custody = try startCustody("reload", config: config)
            defer { custody.cleanUp() }
            try publish(custody, topic: "t/1", count: 1)
            try first.waitFor { events($0, status: 204).count == 1 }
            let yaml = try String(contentsOfFile: config, encoding: .utf8)
                .replacingOccurrences(of: first.endpoint, with: second.endpoint)
                + "\n" + route(first.endpoint, "b") + "\n"
            try yaml.write(toFile: config, atomically: true, encoding: .utf8)
            kill(custody.process.processIdentifier, SIGHUP)
            try custody.waitForOutput(containing: "custody: SIGHUP: registry reloaded", timeout: 10)
            #expect(custody.stdout.contains("custody: route b -> \(first.endpoint)"))
            try publish(custody, topic: "t/2", count: 1)
            // The receiver logs a request before it answers: the reload may come before route a
            // heard its 204, and its successor then sends t/1 again (at least once, same id).
            let subjects = { (requests: [TestEventReceiver.Request]) in events(requests, status: 204).compactMap { $0["subject"] as? String } }
            let moved = try second.waitFor { subjects($0).contains("t/2") }
            #expect(Set(subjects(moved)).isSubset(of: ["t/1", "t/2"]), "\(subjects(moved))")
            let both = try first.waitFor { subjects($0).contains("t/2") }
            #expect(subjects(both).first == "t/1" && subjects(both).last == "t/2", "route b takes t/2 too: \(subjects(both))")
            #expect(subjects(both).filter { $0 == "t/2" }.count == 1)
        }
    }
}
