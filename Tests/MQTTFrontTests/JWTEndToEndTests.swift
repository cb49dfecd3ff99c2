import CustodyTesting
import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

// JSON Web Tokens end to end (issue 22): the real `custody` with an `authentication: jwt:`
// section, keys made by openssl, tokens signed in the test, and real clients: paho-mqtt with
// MQTT 5 enhanced authentication, mosquitto_pub with the token as password (3.1.1 and 5),
// and the package's codec over a socket for AUTH re-authentication (paho sends no AUTH).

private func jwtConfiguration(_ label: String, _ keys: TestSigningKeys, extra: String = "") throws -> String {
    try signInConfiguration(label, """
        authentication:
          jwt:
            - issuer: https://login.example/tenant
              audience: custody
              keys: [\(keys.path("rsa.pub")), \(keys.path("ec256.pub")), \(keys.path("ed25519.pub"))]
              authenticationNameClaim: sub
              attributeClaims: { area: area, roles: roles }
              clockSkewSeconds: 0
        \(extra)
        """).path
}

private func startCustody(_ label: String, config: String) throws -> RunningCustody {
    try RunningCustody(
        label, arguments: ["--config", config, "--metrics", "127.0.0.1:0", "--connects-per-second-per-session", "0"])
}

/// AUTH 0x19 with `token` (MQTT 5 re-authentication).
private func reauthenticate(_ client: RawClient, _ token: String) throws {
    var auth = MQTTProperties()
    auth.append(.authenticationMethod("CUSTOM-JWT"))
    auth.append(.authenticationData(ByteBuffer(string: token)))
    try client.send(.auth(MQTTAuth(reasonCode: .reAuthenticate, properties: auth)))
}

private func authenticationData(_ packet: MQTTPacket?) -> MQTTAuth? {
    if case .auth(let auth)? = packet { return auth }
    return nil
}

@Suite("JSON Web Tokens end to end", .serialized)
struct JWTEndToEndTests {
    @Test func tokensInEnhancedAuthenticationAndInThePassword() async throws {
        let keys = try await offPool { try TestSigningKeys() }
        let rs256 = try await keys.token(TestClaims(subject: "device-1"), alg: "RS256")
        let es256 = try await keys.token(TestClaims(subject: "device-2"), alg: "ES256", key: "ec256")
        let eddsa = try await keys.token(TestClaims(subject: "device-3"), alg: "EdDSA", key: "ed25519")
        let expired = try await keys.token(TestClaims(subject: "device-1", expiresIn: -5), alg: "RS256")
        let wrongAudience = try await keys.token(TestClaims(audience: "other", subject: "device-1"), alg: "RS256")
        let unsigned = try await keys.token(TestClaims(subject: "device-1"), alg: "none")
        let foreign = try await keys.token(TestClaims(subject: "device-1"), alg: "RS256", key: "other-rsa")
        try await offPool {
            let custody = try startCustody("jwt", config: try jwtConfiguration("jwt", keys))
            defer { custody.cleanUp() }
            #expect(custody.stdout.contains("custody: sign-in order=certificate,jwt,password_file,webhook jwt_issuers=1 jwt_key_files=3"))
            // MQTT 5 enhanced authentication, Event Grid's method and the OAuth 2 name.
            let a = try signInPaho(custody, id: "jwt-a", method: "CUSTOM-JWT", data: rs256)
            let b = try signInPaho(custody, id: "jwt-b", method: "OAUTH2-JWT", data: es256)
            let c = try signInPaho(custody, id: "jwt-c", user: "device-3", method: "CUSTOM-JWT", data: eddsa)
            defer { a.stop(); b.stop(); c.stop() }
            #expect(try connackCode(a) == 0)
            #expect(a.output.contains("method=CUSTOM-JWT"))
            #expect(try connackCode(b) == 0)
            #expect(try connackCode(c) == 0)
            // The name claim owns the session.
            let granted = try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "jwt-a" }
            #expect(granted.authenticationName.value == "device-1")
            #expect(try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "jwt-b" }
                .authenticationName.value == "device-2")

            // Refusals: 0x87, recorded as rejected(clientAuthenticationError) with the reason logged.
            for (session, token, reason) in [
                ("bad-expired", expired, "expired"), ("bad-audience", wrongAudience, "audience"),
                ("bad-none", unsigned, "alg none"), ("bad-key", foreign, "signature"),
            ] {
                let client = try signInPaho(custody, id: session, method: "CUSTOM-JWT", data: token)
                defer { client.stop() }
                #expect(try connackCode(client) == 135, "\(session)")
                let event = try custody.waitForEvent { $0.sessionName.value == session }
                #expect(event.kind == .rejected(.clientAuthenticationError), "\(session)")
                _ = try custody.waitForLog("connect rejected", session, reason)
            }
            // A Username that is not the name claim.
            let mismatch = try signInPaho(custody, id: "bad-user", user: "intruder", method: "CUSTOM-JWT", data: rs256)
            defer { mismatch.stop() }
            #expect(try connackCode(mismatch) == 135)
            _ = try custody.waitForLog("connect rejected", "bad-user", "Username is not the token's name claim")
            #expect(try custody.waitForEvent { $0.sessionName.value == "bad-user" }.kind == .rejected(.clientAuthenticationError))
            // The token method without a token: a token that proves nothing.
            let empty = try signInPaho(custody, id: "bad-empty", method: "CUSTOM-JWT")
            defer { empty.stop() }
            #expect(try connackCode(empty) == 135)
            // A method no way in takes: 0x8C.
            let scram = try signInPaho(custody, id: "bad-method", method: "SCRAM-SHA-256", data: "x")
            defer { scram.stop() }
            #expect(try connackCode(scram) == 140)

            // The password field (3.1.1, and 5 without a method): a Username equal to the claim, or none.
            var (status, output) = try mosquittoPublish(custody, ["-V", "mqttv311", "-i", "pw-1", "-u", "device-1", "-P", rs256])
            #expect(status == 0, "\(output)")
            (status, output) = try mosquittoPublish(custody, ["-V", "mqttv5", "-i", "pw-2", "-u", "", "-P", es256])
            #expect(status == 0, "\(output)")
            #expect(try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "pw-2" }
                .authenticationName.value == "device-2")
            (status, output) = try mosquittoPublish(custody, ["-V", "mqttv311", "-i", "pw-3", "-u", "intruder", "-P", rs256])
            #expect(status != 0 && output.contains("not authorised"), "\(output)")
            (status, output) = try mosquittoPublish(custody, ["-V", "mqttv311", "-i", "pw-4", "-u", "device-1", "-P", expired])
            #expect(status != 0 && output.contains("not authorised"), "\(output)")
            #expect(try custody.waitForEvent { $0.sessionName.value == "pw-4" }.kind == .rejected(.clientAuthenticationError))
            // No token is ever logged.
            let log = custody.stdout + custody.stderr
            for token in [rs256, es256, expired, foreign] {
                #expect(!log.contains(String(token.split(separator: ".")[2])))
            }
        }
    }

    @Test func expiryEndsTheConnectionUnlessReauthenticated() async throws {
        let keys = try await offPool { try TestSigningKeys() }
        func token(_ subject: String, _ seconds: Double) async throws -> String {
            try await keys.token(TestClaims(subject: subject, expiresIn: seconds), alg: "ES256", key: "ec256")
        }
        let renewed = try await token("device-1", 600)
        let someoneElse = try await token("device-9", 600)
        let expired = try await token("device-1", -10)
        let config = try jwtConfiguration("jwt-expiry", keys)
        let custody = try await offPool { try startCustody("jwt-expiry", config: config) }
        do {
            // AUTH 0x19 with a new token before exp: AUTH 0x00, and the connection outlives the first exp.
            // Short tokens are signed on the test's own thread just before they are used: a loaded
            // machine may take seconds to get anywhere.
            try await offPool {
                let short = try keys.tokenNow(TestClaims(subject: "device-1", expiresIn: 6), alg: "ES256", key: "ec256")
                let client = try RawClient(port: custody.port)
                var properties = MQTTProperties()
                properties.append(.authenticationMethod("CUSTOM-JWT"))
                properties.append(.authenticationData(ByteBuffer(string: short)))
                try client.send(.connect(MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "renewing", cleanStart: true, keepAlive: 60,
                    properties: properties)))
                guard case .connack(let connack)? = try client.receive() else { throw E2EError.unexpected("no CONNACK") }
                #expect(connack.reasonCode == .success)
                #expect(connack.properties.authenticationMethod == "CUSTOM-JWT")
                try reauthenticate(client, renewed)
                let answer = authenticationData(try client.receive())
                #expect(answer?.reasonCode == .success)
                #expect(answer?.properties.authenticationMethod == "CUSTOM-JWT")
                usleep(7_500_000)
                try client.send(.pingreq)
                #expect(try client.receive() == .pingresp)
                _ = try custody.waitForLog("re-authenticated", "renewing")
            }

            // Without re-authentication: DISCONNECT 0x87 at exp, recorded as clientAuthenticationError.
            try await offPool {
                let lapsingToken = try keys.tokenNow(TestClaims(subject: "device-1", expiresIn: 8), alg: "ES256", key: "ec256")
                let lapsing = try signInPaho(custody, id: "lapsing", method: "CUSTOM-JWT", data: lapsingToken)
                defer { lapsing.stop() }
                #expect(try connackCode(lapsing, timeout: 20) == 0)
                _ = try lapsing.waitForOutput(containing: "DISCONNECT rc=135", timeout: 20)
                let ended = try custody.waitForEvent { $0.sessionName.value == "lapsing" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.clientAuthenticationError))

                // Re-authentication as someone else, or with a bad token: DISCONNECT 0x87.
                for (session, token) in [("renaming", someoneElse), ("stale", expired)] {
                    let other = try RawClient(port: custody.port)
                    var connect = MQTTProperties()
                    connect.append(.authenticationMethod("CUSTOM-JWT"))
                    connect.append(.authenticationData(ByteBuffer(string: renewed)))
                    try other.send(.connect(MQTTConnect(
                        protocolVersion: .mqtt5, clientIdentifier: session, cleanStart: true, keepAlive: 60,
                        properties: connect)))
                    guard case .connack(let ack)? = try other.receive() else { throw E2EError.unexpected("no CONNACK") }
                    #expect(ack.reasonCode == .success)
                    try reauthenticate(other, token)
                    let packets = try other.receiveUntilClosed()
                    #expect(packets == [.disconnect(MQTTDisconnect(reasonCode: .notAuthorized))], "\(session)")
                    let end = try custody.waitForEvent { $0.sessionName.value == session && $0.kind != .connected }
                    #expect(end.kind == .disconnected(.clientAuthenticationError))
                }
            }
        } catch {
            _ = try? await offPool { custody.cleanUp() }
            throw error
        }
        try await offPool { custody.cleanUp() }
    }

    @Test func tokenClaimsSelectClientGroups() async throws {
        let keys = try await offPool { try TestSigningKeys() }
        let area1 = try await keys.token(
            TestClaims(subject: "machine-1", extra: ["area": .string("a1"), "roles": .strings(["reader"])]), alg: "RS256")
        let area2 = try await keys.token(TestClaims(subject: "machine-2", extra: ["area": .string("a2")]), alg: "RS256")
        let overridden = try await keys.token(TestClaims(subject: "machine-3", extra: ["area": .string("a1")]), alg: "RS256")
        let disabled = try await keys.token(TestClaims(subject: "machine-off"), alg: "RS256")
        try await offPool {
            let config = try jwtConfiguration("jwt-groups", keys, extra: """
                clients:
                  - { authenticationName: machine-3, attributes: { area: a2 } }
                  - { authenticationName: machine-off, state: Disabled }
                clientGroups:
                  - { name: Area1, query: "attributes.area = 'a1'" }
                  - { name: Readers, query: "attributes.roles IN ['reader']" }
                topicSpaces:
                  - { name: Area1Topics, topicTemplates: ["areas/a1/#"] }
                  - { name: Shared, topicTemplates: ["shared/#"] }
                permissionBindings:
                  - { name: Area1-Sub, clientGroupName: Area1, topicSpaceName: Area1Topics, permission: Subscriber }
                  - { name: Readers-Sub, clientGroupName: Readers, topicSpaceName: Shared, permission: Subscriber }
                """)
            let custody = try startCustody("jwt-groups", config: config)
            defer { custody.cleanUp() }
            let one = try signInPaho(custody, id: "g-1", method: "CUSTOM-JWT", data: area1, subscribe: ["areas/a1/#", "shared/x"])
            let two = try signInPaho(custody, id: "g-2", method: "CUSTOM-JWT", data: area2, subscribe: ["areas/a1/#", "shared/x"])
            // The token's area overrides the registry's.
            let three = try signInPaho(custody, id: "g-3", method: "CUSTOM-JWT", data: overridden, subscribe: ["areas/a1/#"])
            defer { one.stop(); two.stop(); three.stop() }
            _ = try one.waitForOutput(containing: "SUBACK 1\n")
            _ = try one.waitForOutput(containing: "SUBACK 1\nSUBACK 1")
            _ = try two.waitForOutput(containing: "SUBACK 135\nSUBACK 135")
            _ = try three.waitForOutput(containing: "SUBACK 1")
            // The registry still disables a name a token proves.
            let off = try signInPaho(custody, id: "g-off", method: "CUSTOM-JWT", data: disabled)
            defer { off.stop() }
            #expect(try connackCode(off) == 135)
            #expect(try custody.waitForEvent { $0.sessionName.value == "g-off" }.kind == .rejected(.clientDisabled))
        }
    }

    /// SIGHUP re-reads the issuers' key files: a key added is trusted from then on, one
    /// removed no longer is (for new CONNECTs); a key file that cannot be used keeps the keys in force.
    @Test func sighupReloadsTheKeys() async throws {
        let keys = try await offPool { try TestSigningKeys() }
        let es256 = try await keys.token(TestClaims(subject: "device-2"), alg: "ES256", key: "ec256")
        let rs256 = try await keys.token(TestClaims(subject: "device-1"), alg: "RS256")
        try await offPool {
            func write(_ files: [String]) throws -> String {
                try signInConfiguration("jwt-reload", """
                    authentication:
                      jwt:
                        - { issuer: "https://login.example/tenant", audience: custody, keys: [\(files.joined(separator: ", "))] }
                    """).path
            }
            let config = try write([keys.path("rsa.pub")])
            let custody = try startCustody("jwt-reload", config: config)
            defer { custody.cleanUp() }
            let before = try signInPaho(custody, id: "r-1", method: "CUSTOM-JWT", data: es256)
            defer { before.stop() }
            #expect(try connackCode(before) == 135)
            let kept = try signInPaho(custody, id: "r-kept", method: "CUSTOM-JWT", data: rs256)
            defer { kept.stop() }
            #expect(try connackCode(kept) == 0)

            try String(contentsOfFile: try write([keys.path("ec256.pub")]), encoding: .utf8)
                .write(toFile: config, atomically: true, encoding: .utf8)
            kill(custody.process.processIdentifier, SIGHUP)
            _ = try custody.waitForOutput(containing: "registry reloaded", timeout: 10)
            let after = try signInPaho(custody, id: "r-2", method: "CUSTOM-JWT", data: es256)
            let removed = try signInPaho(custody, id: "r-3", method: "CUSTOM-JWT", data: rs256)
            defer { after.stop(); removed.stop() }
            #expect(try connackCode(after) == 0)
            #expect(try connackCode(removed) == 135)
            // The connection the removed key let in stays (tokens are not asked again).
            #expect(!kept.output.contains("DISCONNECT"))

            // A key file that holds a private key: the reload fails, the keys in force stay.
            try String(contentsOfFile: try write([keys.path("ec256.key")]), encoding: .utf8)
                .write(toFile: config, atomically: true, encoding: .utf8)
            kill(custody.process.processIdentifier, SIGHUP)
            _ = try custody.waitForLog("registry reload failed", "private key")
            let still = try signInPaho(custody, id: "r-4", method: "CUSTOM-JWT", data: es256)
            defer { still.stop() }
            #expect(try connackCode(still) == 0)
        }
    }
}
