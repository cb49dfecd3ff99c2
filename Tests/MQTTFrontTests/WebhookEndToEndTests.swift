import CustodyTesting
import Foundation
import LedgerCore
import Testing

// Webhook authentication end to end (issue 22): the real `custody` asking a real HTTP
// server on 127.0.0.1 (TestWebhookServer, Python's http.server) that answers allow, deny,
// slowly, 500 and garbage; real clients (paho-mqtt, mosquitto_pub).

private func startCustody(_ label: String, _ server: TestWebhookServer, cache: Int, extra: String = "") throws -> RunningCustody {
    let config = try signInConfiguration(label, """
        authentication:
          webhook:
            endpoint: \(server.endpoint)
            timeoutMilliseconds: 1000
            cacheSeconds: \(cache)
            headers: { Authorization: "Bearer ${env:CUSTODY_TEST_WEBHOOK_TOKEN}" }
        \(extra)
        """).path
    setenv("CUSTODY_TEST_WEBHOOK_TOKEN", "t0k3n", 1)
    return try RunningCustody(
        label, arguments: ["--config", config, "--metrics", "127.0.0.1:0", "--connects-per-second-per-session", "0"])
}

/// `custody_auth_webhook_requests_total{outcome="OUTCOME"}` now.
private func webhookRequests(_ custody: RunningCustody, _ outcome: String) throws -> Int {
    let text = try scrape(try metricsPort(custody))
    let prefix = "custody_auth_webhook_requests_total{outcome=\"\(outcome)\"} "
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
    return Int(Double(line.dropFirst(prefix.count)) ?? -1)
}

@Suite("Webhook authentication end to end", .serialized)
struct WebhookEndToEndTests {
    @Test func allowDenySlowFailingAndGarbage() async throws {
        try await offPool {
            let server = try TestWebhookServer()
            defer { server.stop() }
            let custody = try startCustody("webhook", server, cache: 0)
            defer { custody.cleanUp() }
            #expect(custody.stdout.contains("webhook=\(server.endpoint) webhook_timeout_ms=1000 webhook_cache_seconds=0"))
            // allow: the webhook names the client and gives attributes.
            let allowed = try signInPaho(custody, id: "w-allow", user: "machine-1", password: "area1")
            defer { allowed.stop() }
            #expect(try connackCode(allowed) == 0)
            #expect(try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "w-allow" }
                .authenticationName.value == "machine-1")
            let request = try server.lastRequest()
            #expect(request["clientId"] as? String == "w-allow")
            #expect(request["password"] as? String == Data("area1".utf8).base64EncodedString())
            #expect((request["remoteAddress"] as? String)?.hasPrefix("127.0.0.1:") == true)
            #expect(request["listener"] as? String == "127.0.0.1:\(custody.port)")
            #expect(try server.lastHeaders().contains("Authorization: Bearer t0k3n"))

            // deny: 0x87 (3.1.1: 5), recorded with the webhook's errorReason in the log.
            let denied = try signInPaho(custody, id: "w-deny", user: "deny-1", password: "x")
            defer { denied.stop() }
            #expect(try connackCode(denied) == 135)
            #expect(try custody.waitForEvent { $0.sessionName.value == "w-deny" }.kind == .rejected(.clientAuthenticationError))
            _ = try custody.waitForLog("connect rejected", "w-deny", "denied by the test server")
            var (status, output) = try mosquittoPublish(custody, ["-V", "mqttv311", "-i", "w-deny-3", "-u", "deny-2", "-P", "x"])
            #expect(status != 0 && output.contains("not authorised"), "\(output)")

            // The endpoint fails: 0x88 Server unavailable (3.1.1: 3), never an allow.
            for (session, user) in [("w-fail", "fail-1"), ("w-garbage", "garbage-1"), ("w-slow", "slow-1")] {
                let client = try signInPaho(custody, id: session, user: user, password: "x")
                defer { client.stop() }
                #expect(try connackCode(client) == 136, "\(session)")
                #expect(try custody.waitForEvent { $0.sessionName.value == session }.kind == .rejected(.clientAuthenticationError))
                _ = try custody.waitForLog("connect rejected", session, "webhook unavailable")
            }
            (status, output) = try mosquittoPublish(custody, ["-V", "mqttv311", "-i", "w-fail-3", "-u", "fail-2", "-P", "x"])
            #expect(status != 0 && output.contains("unavailable"), "\(output)")
            #expect(try webhookRequests(custody, "failure") == 4)
            #expect(try webhookRequests(custody, "allow") == 1)
            #expect(try webhookRequests(custody, "deny") == 2)

            // expiration ends the connection like a token's exp.
            let lapsing = try signInPaho(custody, id: "w-short", user: "short-1", password: "x")
            defer { lapsing.stop() }
            #expect(try connackCode(lapsing) == 0)
            _ = try lapsing.waitForOutput(containing: "DISCONNECT rc=135", timeout: 6)
            let end = try custody.waitForEvent { $0.sessionName.value == "w-short" && $0.kind != .connected }
            #expect(end.kind == .disconnected(.clientAuthenticationError))
        }
    }

    @Test func cacheAndClientGroups() async throws {
        try await offPool {
            let server = try TestWebhookServer()
            defer { server.stop() }
            let custody = try startCustody("webhook-cache", server, cache: 60, extra: """
                clientGroups:
                  - { name: Area1, query: "attributes.area = 'area1'" }
                topicSpaces:
                  - { name: Area1Topics, topicTemplates: ["areas/area1/#"] }
                permissionBindings:
                  - { name: Area1-Sub, clientGroupName: Area1, topicSpaceName: Area1Topics, permission: Subscriber }
                """)
            defer { custody.cleanUp() }
            // The webhook's attribute area=area1 (the test server's echo of the password) selects the group.
            let one = try signInPaho(custody, id: "c-1", user: "machine-1", password: "area1", subscribe: ["areas/area1/#"])
            let two = try signInPaho(custody, id: "c-2", user: "machine-2", password: "area2", subscribe: ["areas/area1/#"])
            defer { one.stop(); two.stop() }
            _ = try one.waitForOutput(containing: "SUBACK 1")
            _ = try two.waitForOutput(containing: "SUBACK 135")
            let asked = try server.count()
            #expect(asked == 2)
            // The same credentials (ClientID, Username, password) again: answered from the cache.
            for _ in 0..<3 {
                let (status, output) = try mosquittoPublish(custody, ["-V", "mqttv5", "-i", "c-3", "-u", "machine-1", "-P", "area1"])
                #expect(status == 0, "\(output)")
            }
            #expect(try server.count() == 3)
            #expect(try webhookRequests(custody, "cached") == 2)
        }
    }
}
