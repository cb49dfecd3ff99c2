import CustodyTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Routes end to end (issue 21): the real `custody` with a `routes:` section, mosquitto_pub
// publishing, and a real HTTP receiver on 127.0.0.1 (TestEventReceiver) that fails on demand.

/// A configuration file with `routes` (YAML list items, indented by two) in a fresh directory.
func routesConfiguration(_ label: String, _ routes: String, extra: String = "") throws -> (path: String, directory: String) {
    let directory = scratchDirectory("routes-\(label)")
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let path = directory + "/custody.yaml"
    try """
        namespace: { name: plant-ns }
        \(extra)
        routes:
        \(routes)
        """.write(toFile: path, atomically: true, encoding: .utf8)
    return (path, directory)
}

func startCustody(_ label: String, config: String, directory: String? = nil, _ extra: [String] = []) throws -> RunningCustody {
    try RunningCustody(
        label, arguments: ["--config", config, "--connects-per-second-per-session", "0"] + extra, directory: directory)
}

/// mosquitto_pub: `count` messages `1`...`count` (one a line) on `topic` at `qos`.
func publish(_ custody: RunningCustody, topic: String, count: Int = 1, qos: Int = 1, extra: [String] = []) throws {
    let lines = (1...count).map(String.init).joined(separator: "\n") + "\n"
    let input = scratchDirectory("lines")
    try lines.write(toFile: input, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(atPath: input) }
    let (status, out, err) = try run("/bin/sh", ["-c",
        "/usr/bin/mosquitto_pub -h 127.0.0.1 -p \(custody.port) -i pub-\(getpid()) -q \(qos) -t '\(topic)' -l \(extra.joined(separator: " ")) < '\(input)'",
    ], timeout: 120)
    try #require(status == 0, "mosquitto_pub: \(out) \(err)")
}

/// The events of the requests: one per structured or binary request, each item of a batch.
func events(_ requests: [TestEventReceiver.Request], status: Int? = nil) -> [[String: Any]] {
    requests.filter { status == nil || $0.status == status }.flatMap { request -> [[String: Any]] in
        if let array = request.json as? [[String: Any]] { return array }
        if let object = request.json as? [String: Any] { return [object] }
        return []
    }
}

@Suite("Routes end to end", .serialized)
struct RoutesEndToEndTests {
    /// One message to three routes, one per mode; every event carries CloudEvents' required
    /// attributes, the MQTT ones and the enrichments; the lifecycle events come too.
    @Test func structuredBinaryAndBatchModes() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            let (config, _) = try routesConfiguration("modes", """
                  - name: structured
                    topicFilters: ["areas/+/machines/#"]
                    endpoint: \(receiver.endpoint)?mode=structured
                    mode: structured
                    headers: { Authorization: "Bearer ${env:HOME}" }
                    enrichments: { static: { site: plant-7 } }
                    deadLetter: { topic: "$custody/deadletter/structured" }
                  - name: binary
                    topicFilters: ["areas/#"]
                    endpoint: \(receiver.endpoint)?mode=binary
                    mode: binary
                    deadLetter: { topic: "$custody/deadletter/binary" }
                  - name: batch
                    topicFilters: ["areas/a1/#"]
                    lifecycleEvents: true
                    endpoint: \(receiver.endpoint)?mode=batch
                    mode: batch
                    maxBatchEvents: 10
                    deadLetter: { topic: "$custody/deadletter/batch" }
                """)
            let custody = try startCustody("modes", config: config)
            defer { custody.cleanUp() }
            #expect(custody.stdout.contains("custody: routes 3 source=plant-ns"), "\(custody.stdout)")
            try publish(custody, topic: "areas/a1/machines/m1", extra: ["-D", "publish", "content-type", "application/json", "-V", "5", "-u", "device-1"])
            let requests = try receiver.waitFor { requests in
                requests.contains { $0.headers["ce-type"] != nil }
                    && events(requests.filter { $0.headers["content-type"]?.hasPrefix("application/cloudevents+json") == true }).count >= 1
                    && events(requests.filter { $0.headers["content-type"]?.hasPrefix("application/cloudevents-batch+json") == true })
                        .contains { $0["type"] as? String == "MQTT.EventPublished" }
            }
            let structured = try #require(requests.first { $0.headers["content-type"]?.hasPrefix("application/cloudevents+json") == true })
            #expect(structured.headers["authorization"] == "Bearer \(ProcessInfo.processInfo.environment["HOME"] ?? "")")
            let event = try #require(structured.json as? [String: Any])
            checkRequiredAttributes(event)
            #expect(event["type"] as? String == "MQTT.EventPublished")
            #expect(event["source"] as? String == "plant-ns")
            #expect(event["subject"] as? String == "areas/a1/machines/m1")
            #expect(event["data"] as? Int == 1, "the payload 1 is JSON: \(event)")
            #expect(event["mqttqos"] as? Int == 1)
            #expect(event["mqttclientauthname"] as? String == "device-1")
            #expect(event["site"] as? String == "plant-7")

            let binary = try #require(requests.first { $0.headers["ce-type"] != nil })
            #expect(binary.headers["ce-specversion"] == "1.0")
            #expect(binary.headers["ce-id"] == event["id"] as? String, "one message, one id in every route")
            #expect(binary.headers["ce-source"] == "plant-ns")
            #expect(binary.headers["ce-subject"] == "areas/a1/machines/m1")
            #expect(binary.headers["ce-time"] != nil)
            #expect(binary.headers["content-type"] == "application/json")
            #expect(String(decoding: binary.body, as: UTF8.self) == "1")

            let batched = events(requests.filter { $0.headers["content-type"]?.hasPrefix("application/cloudevents-batch+json") == true })
            for item in batched { checkRequiredAttributes(item) }
            #expect(batched.contains { $0["type"] as? String == "MQTT.EventPublished" && $0["id"] as? String == event["id"] as? String })
            let connected = try #require(batched.first { $0["type"] as? String == "Microsoft.EventGrid.MQTTClientSessionConnected" })
            #expect((connected["data"] as? [String: Any])?["clientAuthenticationName"] as? String == "device-1")
            #expect(connected["custodyseq"] as? Int != nil && connected["custodyhash"] as? String != nil)
            // The disconnect follows, in the ledger's order.
            let later = try receiver.waitFor { requests in
                events(requests).contains { $0["type"] as? String == "Microsoft.EventGrid.MQTTClientSessionDisconnected" }
            }
            let lifecycle = events(later).filter { ($0["type"] as? String)?.hasPrefix("Microsoft.EventGrid") == true }
            #expect(lifecycle.compactMap { $0["custodyseq"] as? Int } == lifecycle.compactMap { $0["custodyseq"] as? Int }.sorted())
        }
    }

    /// Batch mode: a batch that is not full waits for more events (up to
    /// `maxBatchWaitMilliseconds`), goes as soon as it is full, and goes not full at the end of
    /// the wait.
    @Test func aBatchWaitsToFillUpToItsLongestWait() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            let (config, _) = try routesConfiguration("filling", """
                  - name: filling
                    topicFilters: ["f/#"]
                    endpoint: \(receiver.endpoint)
                    mode: batch
                    maxBatchEvents: 3
                    maxBatchWaitMilliseconds: 10000
                    deadLetter: { directory: dead }
                """)
            let custody = try startCustody("filling", config: config)
            defer { custody.cleanUp() }
            // Three messages, each from its own mosquitto_pub: one request of three, sent once
            // the third came (well before the 10 s wait is over).
            for index in 1...3 { try publish(custody, topic: "f/\(index)") }
            let full = try receiver.waitFor(timeout: 8) { !$0.isEmpty }
            #expect(full.count == 1)
            #expect(events(full).compactMap { $0["subject"] as? String } == ["f/1", "f/2", "f/3"], "\(events(full))")
            // One more: alone, at the end of the wait.
            try publish(custody, topic: "f/4")
            let all = try receiver.waitFor(timeout: 30) { $0.count >= 2 }
            #expect(all.count == 2)
            #expect(events([all[1]]).compactMap { $0["subject"] as? String } == ["f/4"])
        }
    }

    /// 500 and 429 with Retry-After are tried again (the same id), honouring Retry-After;
    /// messages keep their order.
    @Test func retriesOn500And429WithRetryAfter() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.fail(["500", "500", "429 2"])
            let (config, directory) = try routesConfiguration("retry", """
                  - name: ingest
                    topicFilters: ["t/#"]
                    endpoint: \(receiver.endpoint)
                    deadLetter: { directory: dead }
                """)
            let custody = try startCustody("retry", config: config)
            defer { custody.cleanUp() }
            try publish(custody, topic: "t/1", count: 3)
            let requests = try receiver.waitFor { events($0, status: 204).count >= 3 }
            let statuses = requests.map(\.status)
            #expect(Array(statuses.prefix(4)) == [500, 500, 429, 204], "\(statuses)")
            let ids = events(requests).map { $0["id"] as? String ?? "" }
            #expect(Set(ids.prefix(4)).count == 1, "one event, tried four times: \(ids)")
            #expect(requests[3].time - requests[2].time >= 1.9, "Retry-After: 2 is honoured")
            #expect(events(requests, status: 204).map { $0["data"] as? Int } == [1, 2, 3], "in order")
            #expect(!FileManager.default.fileExists(atPath: directory + "/dead"), "nothing dead-lettered")
        }
    }

    /// maxAttempts exhausted, and a 400, go to the dead-letter directory with the last status;
    /// the route goes on with the next events.
    @Test func deadLetterAfterMaxAttemptsAndOn4xx() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.fail(["503", "503", "503", "400"])
            let (config, directory) = try routesConfiguration("dead", """
                  - name: ingest
                    topicFilters: ["t/#"]
                    endpoint: \(receiver.endpoint)
                    retry: { maxAttempts: 3 }
                    deadLetter: { directory: dead }
                """, extra: "metrics: 127.0.0.1:0")
            let custody = try startCustody("dead", config: config)
            defer { custody.cleanUp() }
            try publish(custody, topic: "t/1", count: 3)
            let requests = try receiver.waitFor { events($0, status: 204).count >= 1 }
            #expect(requests.map(\.status) == [503, 503, 503, 400, 204], "\(requests.map(\.status))")
            let dead = directory + "/dead"
            let files = try FileManager.default.contentsOfDirectory(atPath: dead).sorted()
            #expect(files == ["ingest-00000000000000000001.json", "ingest-00000000000000000002.json"], "\(files)")
            let first = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dead + "/" + files[0]))) as? [String: Any])
            #expect(first["reason"] as? String == "maxAttempts")
            #expect(first["lastStatus"] as? Int == 503)
            #expect(first["attempts"] as? Int == 3)
            #expect((first["event"] as? [String: Any])?["data"] as? Int == 1)
            let second = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dead + "/" + files[1]))) as? [String: Any])
            #expect(second["reason"] as? String == "rejected")
            #expect(second["lastStatus"] as? Int == 400)
            #expect(events(requests, status: 204).first?["data"] as? Int == 3)
            // The metrics say so.
            let line = try #require(custody.stdout.split(separator: "\n").first { $0.hasPrefix("custody: metrics http://") })
            let url = String(line.dropFirst("custody: metrics ".count))
            let (_, metrics, _) = try run("/usr/bin/curl", ["-s", url])
            #expect(metrics.contains(#"custody_route_deadlettered_total{route="ingest"} 2"#), "\(metrics)")
            #expect(metrics.contains(#"custody_route_delivered_total{route="ingest"} 1"#))
            #expect(metrics.contains(#"custody_route_requests_total{route="ingest"} 1"#))
            #expect(metrics.contains(#"custody_route_failed_total{route="ingest",status="503"} 3"#))
            #expect(metrics.contains(#"custody_route_outbox_events{route="ingest"} 0"#))
            #expect(metrics.contains("custody_route_delivery_seconds"))
            // custody-audit shows the dead-letter entries with why.
            let (audited, listing, auditError) = try run(product: "custody-audit", [
                "routes", "--data-dir", custody.directory, "--config", config,
            ])
            #expect(audited == 0, "\(auditError)")
            #expect(listing.contains("outbox: empty"), "\(listing)")
            #expect(listing.contains("dead-letter \(dead): 2 entries"), "\(listing)")
            #expect(listing.contains("ingest-00000000000000000001.json") && listing.contains("maxAttempts attempts=3 last_status=503"), "\(listing)")
            #expect(listing.contains("rejected attempts=1 last_status=400"), "\(listing)")
        }
    }

    /// 10,000 events in the outbox (the endpoint answering 503), custody killed with SIGKILL,
    /// restarted: every event is delivered at least once, each with one id of its own.
    @Test func killNineWithTenThousandEventsInTheOutbox() async throws {
        try await offPool {
            let receiver = try TestEventReceiver()
            defer { receiver.stop() }
            try receiver.answerByDefault("503")
            let (config, _) = try routesConfiguration("kill", """
                  - name: ingest
                    topicFilters: ["t/#"]
                    endpoint: \(receiver.endpoint)
                    mode: batch
                    maxBatchEvents: 500
                    deadLetter: { directory: dead }
                """)
            let first = try startCustody("kill", config: config)
            let directory = first.directory
            defer { first.cleanUp() }
            // Every PUBACK came once its event was in the outbox.
            try publish(first, topic: "t/1", count: 10_000)
            kill(first.process.processIdentifier, SIGKILL)
            first.process.waitUntilExit()
            let refused = events(try receiver.requests())
            // custody-audit sees the outbox as it was left.
            let (audited, listing, auditError) = try run(product: "custody-audit", [
                "routes", "--data-dir", directory, "--json", "--limit", "0",
            ])
            #expect(audited == 0, "\(auditError)")
            let lines = listing.split(separator: "\n")
            #expect(lines.count == 10_000)
            #expect(lines.first?.contains(#""route":"ingest","number":1,"#) == true, "\(lines.first ?? "")")
            try receiver.answerByDefault("204")
            let second = try startCustody("kill-2", config: config, directory: directory)
            defer { second.stop() }
            #expect(second.stdout.contains("outbox_events=10000"), "\(second.stdout)")
            let requests = try receiver.waitFor(timeout: 120) { requests in
                Set(events(requests, status: 204).compactMap { $0["data"] as? Int }).count >= 10_000
            }
            let delivered = events(requests, status: 204)
            var idByPayload: [Int: String] = [:]
            for event in delivered + refused {
                let payload = try #require(event["data"] as? Int)
                let id = try #require(event["id"] as? String)
                if let known = idByPayload[payload] { #expect(known == id, "event \(payload) kept its id") }
                idByPayload[payload] = id
            }
            #expect(Set(delivered.compactMap { $0["data"] as? Int }) == Set(1...10_000))
            #expect(Set(idByPayload.values).count == 10_000, "one id per event")
        }
    }

    /// Bad routes stop start-up naming the key.
    @Test func badRoutesAreNamed() async throws {
        try await offPool {
            let cases: [(String, String)] = [
                ("  - { name: a, topicFilters: [\"x/#\"], endpoint: http://example.com/e, deadLetter: { directory: d } }", "http:// is for loopback endpoints only"),
                ("  - { name: a, topicFilters: [\"x/#/y\"], endpoint: http://127.0.0.1/e, deadLetter: { directory: d } }", "is not an MQTT topic filter"),
                ("  - { name: a, topicFilters: [x], endpoint: http://127.0.0.1/e }", "routes[0].deadLetter: missing"),
                ("  - { name: a, topicFilters: [x], endpoint: http://127.0.0.1/e, deadLetter: { directory: d }, headers: { X: \"${env:CUSTODY_NOT_SET_ANYWHERE}\" } }", "CUSTODY_NOT_SET_ANYWHERE is not set"),
                ("  - { name: a, topicFilters: [x], endpoint: http://127.0.0.1/e, deadLetter: { directory: d }, mode: fast }", "routes[0].mode"),
                ("  - { name: a, endpoint: http://127.0.0.1/e, deadLetter: { directory: d } }", "the route takes nothing"),
                ("  - { name: a, topicFilters: [x], endpoint: http://127.0.0.1/e, deadLetter: { directory: d }, maxBatchWaitMilliseconds: 10001 }", "routes[0].maxBatchWaitMilliseconds"),
            ]
            for (index, (routes, problem)) in cases.enumerated() {
                let (config, _) = try routesConfiguration("bad-\(index)", routes)
                let (status, _, err) = try run(product: "custody", ["--check-config", config])
                #expect(status == 1 && err.contains(problem), "\(routes): \(err)")
            }
        }
    }
}
