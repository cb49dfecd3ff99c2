import CustodyTesting
import Foundation
import Testing

// HTTP publish end to end (issue 21): the real `custody` with `--listen-http`, Debian's curl
// posting to /mqtt/messages and mosquitto_sub receiving what it published; every answer code
// the issue lists except 503 (the store refusing a write: CustodyServerTests, in-process).

private func post(
    _ port: Int, query: String?, user: String? = "pub-1:pw", bearer: String? = nil, headers: [String] = [],
    body: String = "hello"
) throws -> CurlAnswer {
    try curlPost(
        "http://127.0.0.1:\(port)/mqtt/messages" + (query.map { "?" + $0 } ?? ""), user: user, bearer: bearer,
        headers: headers, body: body)
}

/// Users pub-1, other (password "pw"); pub-1 may publish under factory/, everyone may
/// subscribe there.
private func httpConfiguration(_ label: String, extra: String = "") throws -> String {
    let directory = try signInConfiguration(label, "").directory
    let passwords = directory + "/passwords"
    for (index, user) in ["pub-1", "other", "reader"].enumerated() {
        let (status, _, err) = try run("/usr/bin/mosquitto_passwd", (index == 0 ? ["-c"] : []) + ["-b", passwords, user, "pw"])
        try #require(status == 0, "mosquitto_passwd: \(err)")
    }
    return try signInConfiguration(label, """
        passwordFile: \(passwords)
        clientGroups:
          - { name: publishers, query: "authenticationName IN ['pub-1']" }
        topicSpaces:
          - { name: factory, topicTemplates: ["factory/#"] }
        permissionBindings:
          - { name: pub, clientGroupName: publishers, topicSpaceName: factory, permission: Publisher }
          - { name: sub, clientGroupName: $all, topicSpaceName: factory, permission: Subscriber }
        \(extra)
        """).path
}

private func startCustody(_ label: String, config: String, _ extra: [String] = []) throws -> (RunningCustody, Int) {
    let port = try freeLoopbackPort()
    let custody = try RunningCustody(
        label, arguments: ["--config", config, "--listen-http", "127.0.0.1:\(port)", "--connects-per-second-per-session", "0"] + extra)
    try custody.waitForOutput(containing: "custody: listening http 127.0.0.1:\(port) POST /mqtt/messages", timeout: 20)
    return (custody, port)
}

/// A persistent MQTT 5 session `reader` subscribed to factory/# at QoS 1, then gone: what is
/// published meanwhile waits in its queue.
private func subscribeOffline(_ custody: RunningCustody, id: String) throws {
    let (status, out, err) = try run("/usr/bin/mosquitto_sub", [
        "-h", "127.0.0.1", "-p", "\(custody.port)", "-V", "5", "-u", "reader", "-P", "pw", "-i", id, "-c", "-x", "3600",
        "-q", "1", "-t", "factory/#", "-E",
    ], timeout: 15)
    try #require(status == 0, "mosquitto_sub -E: \(out) \(err)")
}

/// The next `count` messages of `reader`'s session: `topic|qos|retain|content type|response topic|user properties|payload`.
private func receive(_ custody: RunningCustody, id: String, count: Int) throws -> [String] {
    let (status, out, err) = try run("/usr/bin/mosquitto_sub", [
        "-h", "127.0.0.1", "-p", "\(custody.port)", "-V", "5", "-u", "reader", "-P", "pw", "-i", id, "-c", "-x", "3600",
        "-q", "1", "-t", "factory/#", "-C", "\(count)", "-W", "10", "-F", "%t|%q|%r|%C|%R|%P|%p",
    ], timeout: 20)
    try #require(status == 0, "mosquitto_sub: \(out) \(err)")
    return out.split(separator: "\n").map(String.init)
}

@Suite("HTTP publish end to end", .serialized)
struct HTTPPublishEndToEndTests {
    /// 204 with every header carried into the MQTT message (a request without content-type:
    /// none); QoS 1 reaches a persistent session that was offline (stored before the 204), and
    /// a retained message stays for later subscribers.
    @Test func curlPublishesAndMosquittoSubReceives() async throws {
        try await offPool {
            let (custody, port) = try startCustody("http-ok", config: try httpConfiguration("http-ok"))
            defer { custody.cleanUp() }
            try subscribeOffline(custody, id: "reader-1")
            let first = try post(port, query: "topic=factory/line1/temp", headers: [
                "mqtt-qos: 1", "content-type: application/json", "mqtt-response-topic: factory/replies",
                "mqtt-correlation-data: \(Data("c-1".utf8).base64EncodedString())",
                #"mqtt-user-properties: [{"name":"site","value":"plant-7"}]"#, "mqtt-message-expiry: 3600",
            ], body: #"{"t":21.5}"#)
            #expect(first.status == 204, "\(first)")
            let retained = try post(port, query: "topic=factory/line2", headers: ["mqtt-qos: 1", "mqtt-retain: 1", "Content-Type:"], body: "kept")
            #expect(retained.status == 204, "\(retained)")
            let lines = try receive(custody, id: "reader-1", count: 2)
            #expect(lines.count == 2)
            #expect(lines.first == #"factory/line1/temp|1|0|application/json|factory/replies|site:plant-7|{"t":21.5}"#, "\(lines)")
            #expect(lines.last == "factory/line2|1|0||||kept", "\(lines)")
            // The retained message is kept for later subscribers.
            let (status, out, _) = try run("/usr/bin/mosquitto_sub", [
                "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "reader", "-P", "pw", "-i", "late",
                "-t", "factory/line2", "-C", "1", "-W", "10", "-F", "%t|%r|%p",
            ], timeout: 20)
            #expect(status == 0 && out == "factory/line2|1|kept\n", "\(out)")
        }
    }

    /// 400 naming what, 401, 403 (a deny, another client, the server's topics), 413.
    @Test func everyRefusalHasItsCode() async throws {
        try await offPool {
            let (custody, port) = try startCustody(
                "http-codes", config: try httpConfiguration("http-codes"), ["--max-packet-bytes", "1024"])
            defer { custody.cleanUp() }
            let bad: [(String?, [String], String)] = [
                (nil, [], "topic"), ("topic=", [], "topic"), ("topic=factory/%2B", [], "topic"),
                ("topic=factory/a", ["mqtt-qos: 2"], "mqtt-qos"), ("topic=factory/a", ["mqtt-retain: maybe"], "mqtt-retain"),
                ("topic=factory/a", ["mqtt-correlation-data: ***"], "mqtt-correlation-data"),
                ("topic=factory/a", ["mqtt-user-properties: {\"name\":1}"], "mqtt-user-properties"),
                ("topic=factory/a", ["mqtt-message-expiry: -1"], "mqtt-message-expiry"),
                ("topic=factory/a", ["mqtt-response-topic: a/#"], "mqtt-response-topic"),
            ]
            for (query, headers, what) in bad {
                let answer = try post(port, query: query, headers: headers)
                #expect(answer.status == 400, "\(query ?? "-") \(headers): \(answer)")
                #expect(answer.body.hasPrefix("400 \(what):"), "\(answer.body)")
            }
            let anonymous = try post(port, query: "topic=factory/a", user: nil)
            #expect(anonymous.status == 401 && anonymous.headers["www-authenticate"]?.contains("Basic") == true, "\(anonymous)")
            #expect(try post(port, query: "topic=factory/a", user: "pub-1:wrong").status == 401)
            #expect(try post(port, query: "topic=factory/a", user: "stranger:pw").status == 401)
            #expect(try post(port, query: "topic=factory/a", user: nil, bearer: "not-a-token").status == 401)
            let denied = try post(port, query: "topic=elsewhere/a")
            #expect(denied.status == 403 && denied.body.contains("pub-1"), "\(denied)")
            #expect(try post(port, query: "topic=factory/a", user: "other:pw").status == 403, "not bound as Publisher")
            #expect(try post(port, query: "topic=%24custody/events/x").status == 403)
            let large = try post(port, query: "topic=factory/a", body: String(repeating: "x", count: 2000))
            #expect(large.status == 413, "\(large)")
            #expect(try post(port, query: "topic=factory/a", body: String(repeating: "x", count: 1000)).status == 204)
            try custody.waitForLog("HTTP publish denied", "elsewhere/a")
        }
    }

    /// 429 with Retry-After past `--publish-messages-per-second` (per authentication name).
    @Test func overTheRateIsTooManyRequests() async throws {
        try await offPool {
            let (custody, port) = try startCustody(
                "http-rate", config: try httpConfiguration("http-rate"), ["--publish-messages-per-second", "1"])
            defer { custody.cleanUp() }
            // Five at once fall into at most two one-second windows: at least three are refused.
            let answers = try (1...5).map { _ in try post(port, query: "topic=factory/a", headers: ["mqtt-qos: 0"]) }
            let refused = answers.filter { $0.status == 429 }
            #expect(refused.count >= 3, "\(answers.map(\.status))")
            #expect(answers.allSatisfy { $0.status == 204 || $0.status == 429 })
            #expect(refused.allSatisfy { Int($0.headers["retry-after"] ?? "") ?? 0 >= 1 }, "\(refused)")
        }
    }

    /// A bearer token (CustodyAuthentication's JWT issuers) names the publisher.
    @Test func bearerTokensSignIn() async throws {
        let keys = try await offPool { try TestSigningKeys() }
        let good = try await keys.token(TestClaims(subject: "pub-1"), alg: "RS256")
        let stranger = try await keys.token(TestClaims(subject: "someone"), alg: "RS256")
        let foreign = try await keys.token(TestClaims(subject: "pub-1"), alg: "RS256", key: "other-rsa")
        try await offPool {
            let config = try httpConfiguration("http-jwt", extra: keys.authenticationSection())
            let (custody, port) = try startCustody("http-jwt", config: config)
            defer { custody.cleanUp() }
            #expect(try post(port, query: "topic=factory/a", user: nil, bearer: good).status == 204)
            #expect(try post(port, query: "topic=factory/a", user: nil, bearer: stranger).status == 403)
            #expect(try post(port, query: "topic=factory/a", user: nil, bearer: foreign).status == 401)
        }
    }

    /// A listener `protocol: https` with its certificate and key: the same publish over TLS.
    @Test func httpsListener() async throws {
        try await offPool {
            let config = try httpConfiguration("https")
            let directory = (config as NSString).deletingLastPathComponent
            let (made, _, err) = try run("/bin/sh", ["-c", """
                cd '\(directory)' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                  -keyout server.key -out server.pem -days 2 -subj '/CN=localhost' 2>/dev/null
                """], timeout: 60)
            try #require(made == 0, "openssl: \(err)")
            let port = try freeLoopbackPort()
            var yaml = try String(contentsOfFile: config, encoding: .utf8)
            yaml += """

                listeners:
                  - { protocol: mqtt, address: "127.0.0.1:0" }
                  - { protocol: https, address: "127.0.0.1:\(port)", certificate: server.pem, privateKey: server.key }
                """
            try yaml.write(toFile: config, atomically: true, encoding: .utf8)
            let (checked, out, _) = try run(product: "custody", ["--check-config", config])
            #expect(checked == 0 && out.contains("https 127.0.0.1:\(port)"), "\(out)")
            let custody = try RunningCustody("https", arguments: ["--config", config, "--data-dir", scratchDirectory("https-data")], ownFlags: true)
            defer { custody.cleanUp() }
            try custody.waitForOutput(containing: "custody: listening https 127.0.0.1:\(port)", timeout: 20)
            let (status, answer, curlError) = try run("/usr/bin/curl", [
                "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}", "-u", "pub-1:pw", "-X", "POST", "--data-binary", "x",
                "https://127.0.0.1:\(port)/mqtt/messages?topic=factory/tls",
            ])
            #expect(status == 0 && answer == "204", "\(answer) \(curlError)")
        }
    }

    @Test func aBadListenHTTPFlagIsNamed() async throws {
        try await offPool {
            let (status, _, err) = try run(product: "custody", ["--listen-http", "nowhere:port"])
            #expect(status == 64 && err.contains("--listen-http 'nowhere:port'"), "\(status) \(err)")
        }
    }
}
