import CustodyTesting
import Foundation
import LedgerCore
import Testing

/// Debian's Mosquitto 2.0 with the custody plugin, and a real `custody` as its ledger:
/// paho-mqtt and mosquitto_pub/sub connect to Mosquitto, the ledger decides, and
/// `custody-audit` reads the record afterwards.
@Suite(.serialized) struct MosquittoPluginTests {
    /// custody with a ledger socket (and its own listener), Mosquitto with the plugin on it.
    func withMosquitto(
        _ label: String, custodyArguments: [String] = [], mosquittoLines: [String] = [],
        _ body: (RunningCustody, RunningMosquitto) throws -> Void
    ) throws {
        let path = try ledgerSocketPath(label)
        try withCustody(label, ["--ledger-socket", path, "--connects-per-second-per-session", "0"] + custodyArguments) { custody in
            let mosquitto = try mosquittoWithPlugin(label, socket: path, lines: mosquittoLines)
            defer { mosquitto.cleanUp() }
            do {
                try body(custody, mosquitto)
            } catch {
                Issue.record("mosquitto log:\n\(mosquitto.log)")
                throw error
            }
            try verifyLedger(custody.directory)
        }
    }

    @Test func theSeedsTwoSessionsOfOneClientAndAnotherClientRefused() async throws {
        try await offPool {
            try withMosquitto("mq-seed") { custody, mosquitto in
                let client = "ipv4=127.0.0.1"
                let first = try paho(["--port", "\(mosquitto.port)", "--v3", "--id", "sessionId1", "--user", client])
                let second = try paho(["--port", "\(mosquitto.port)", "--v3", "--id", "sessionId2", "--user", client])
                try first.waitForOutput(containing: "CONNACK rc=0")
                try second.waitForOutput(containing: "CONNACK rc=0")
                // R6: another client may not have a live session, connected or not.
                let (refused, refusedOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-V", "mqttv311", "-u", "mallory", "-i", "sessionId2", "-t", "t", "-m", "x"])
                #expect(refused != 0)
                #expect(refusedOutput.contains("not authorised"), "\(refusedOutput)")
                try second.stop()
                try custody.waitForEvent { $0.sessionName.value == "sessionId2" && $0.kind.name == "disconnected" }
                let (again, _) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-V", "mqttv311", "-u", "mallory", "-i", "sessionId2", "-t", "t", "-m", "x"])
                #expect(again != 0)
                // R5: its owner resumes it.
                let (resumed, resumedOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port,
                    ["-V", "mqttv311", "-c", "-q", "1", "-u", client, "-i", "sessionId2", "-t", "t", "-m", "x"])
                #expect(resumed == 0, "\(resumedOutput)")
                try first.stop()
                try custody.waitForEvent { $0.sessionName.value == "sessionId1" && $0.kind.name == "disconnected" }
                try custody.waitForEvent { event in
                    event.sessionName.value == "sessionId2" && event.kind.name == "disconnected" && event.connection > 3
                }
                // Mosquitto 2.0.11's plugins are not told why a client went (the reason is
                // always -1): every end through Mosquitto is recorded as connectionLost.
                #expect(try historyLines(custody.directory, session: "sessionId2") == [
                    "connected - \(client)",
                    "rejected ownedByAnotherClient mallory",
                    "disconnected connectionLost \(client)",
                    "rejected ownedByAnotherClient mallory",
                    "connected - \(client)",
                    "disconnected connectionLost \(client)",
                ])
                #expect(try historyLines(custody.directory, session: "sessionId1") == [
                    "connected - \(client)", "disconnected connectionLost \(client)",
                ])
            }
        }
    }

    /// With `plugin_opt_spin_us` (answers polled for before the thread sleeps): the same.
    @Test func theSameClientTakesItsSessionOverAndMosquittoClosesTheOldConnection() async throws {
        try await offPool {
            try withMosquitto("mq-takeover", mosquittoLines: ["plugin_opt_spin_us 80"]) { custody, mosquitto in
                let old = try paho(["--port", "\(mosquitto.port)", "--v3", "--id", "phone", "--user", "alice"])
                try old.waitForOutput(containing: "CONNACK rc=0")
                let (status, output) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-V", "mqttv311", "-u", "alice", "-i", "phone", "-t", "t", "-m", "x"])
                #expect(status == 0, "\(output)")
                try old.waitForOutput(containing: "DISCONNECT")
                try custody.waitForEvent { $0.sessionName.value == "phone" && $0.kind == .disconnected(.connectionLost) }
                // The old connection's end was not recorded again: the takeover ended it.
                #expect(try historyLines(custody.directory, session: "phone") == [
                    "connected - alice",
                    "disconnected sessionTakenOver alice",
                    "connected - alice",
                    "disconnected connectionLost alice",
                ])
                let events = try custody.events().filter { $0.sessionName.value == "phone" }
                #expect(events[1].connection == events[0].connection)
                #expect(events[3].connection == events[2].connection && events[2].connection != events[0].connection)
            }
        }
    }

    /// A bad plugin option stops Mosquitto's start, naming the option.
    @Test func aBadSpinOptionIsNamed() async throws {
        try await offPool {
            let path = try ledgerSocketPath("mq-badopt")
            var failure = ""
            do {
                let mosquitto = try mosquittoWithPlugin("mq-badopt", socket: path, lines: ["plugin_opt_spin_us 5000"])
                mosquitto.cleanUp()
            } catch {
                failure = "\(error)"
            }
            #expect(failure.contains("plugin_opt_spin_us must be 0-1000, got 5000"), "\(failure)")
        }
    }

    @Test func takeoversReachTheConnectionHeldThroughTheOtherFront() async throws {
        try await offPool {
            try withMosquitto("mq-cross") { custody, mosquitto in
                // Custody's own connection, taken over through Mosquitto: DISCONNECT 0x8E.
                let own = try paho(["--port", "\(custody.port)", "--id", "both", "--user", "alice"])
                try own.waitForOutput(containing: "CONNACK rc=0")
                let throughMosquitto = try paho(["--port", "\(mosquitto.port)", "--id", "both", "--user", "alice"])
                try throughMosquitto.waitForOutput(containing: "CONNACK rc=0")
                try own.waitForOutput(containing: "DISCONNECT rc=142")
                // Mosquitto's client, taken over through custody's listener: the plugin disconnects it.
                let back = try paho(["--port", "\(custody.port)", "--id", "both", "--user", "alice"])
                try back.waitForOutput(containing: "CONNACK rc=0")
                try throughMosquitto.waitForOutput(containing: "DISCONNECT")
                try back.stop()
                try custody.waitForEvent { $0.sessionName.value == "both" && $0.kind == .disconnected(.clientInitiatedDisconnect) }
                #expect(try historyLines(custody.directory, session: "both") == [
                    "connected - alice",
                    "disconnected sessionTakenOver alice",
                    "connected - alice",
                    "disconnected sessionTakenOver alice",
                    "connected - alice",
                    "disconnected clientInitiatedDisconnect alice",
                ])
            }
        }
    }

    @Test func theCapReachesTheClientAsNotAuthorized() async throws {
        try await offPool {
            try withMosquitto("mq-cap", custodyArguments: ["--max-sessions-per-client", "2"]) { custody, mosquitto in
                let one = try paho(["--port", "\(mosquitto.port)", "--id", "cap1", "--user", "alice"])
                let two = try paho(["--port", "\(mosquitto.port)", "--id", "cap2", "--user", "alice"])
                try one.waitForOutput(containing: "CONNACK rc=0")
                try two.waitForOutput(containing: "CONNACK rc=0")
                // R3: custody's own front answers 0x97 Quota exceeded ...
                let own = try paho(["--port", "\(custody.port)", "--id", "cap3", "--user", "alice"])
                try own.waitForOutput(containing: "CONNACK rc=151")
                // ... Mosquitto's plugin API can only refuse: 0x87 Not authorized.
                let through = try paho(["--port", "\(mosquitto.port)", "--id", "cap4", "--user", "alice"])
                try through.waitForOutput(containing: "CONNACK rc=135")
                let rejected = try custody.events().filter { $0.kind == .rejected(.quotaExceeded) }.map(\.sessionName.value)
                #expect(rejected == ["cap3", "cap4"])
            }
        }
    }

    @Test func aRestartOfMosquittoEndsItsConnectionsAndTheSessionsResume() async throws {
        try await offPool {
            try withMosquitto("mq-restart") { custody, mosquitto in
                let holder = try paho(["--port", "\(mosquitto.port)", "--v3", "--id", "r1", "--user", "alice"])
                try holder.waitForOutput(containing: "CONNACK rc=0")
                try mosquitto.restart()
                try holder.waitForOutput(containing: "DISCONNECT")
                // The plugin's socket closed with Mosquitto: the ledger ended what it granted.
                try custody.waitForEvent { $0.sessionName.value == "r1" && $0.kind == .disconnected(.connectionLost) }
                let (refused, _) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-V", "mqttv311", "-u", "mallory", "-i", "r1", "-t", "t", "-m", "x"])
                #expect(refused != 0)
                let (resumed, output) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-V", "mqttv311", "-c", "-u", "alice", "-i", "r1", "-t", "t", "-m", "x"])
                #expect(resumed == 0, "\(output)")
                try custody.waitForEvent { $0.sessionName.value == "r1" && $0.kind.name == "disconnected" && $0.connection > 2 }
                #expect(try historyLines(custody.directory, session: "r1") == [
                    "connected - alice",
                    "disconnected connectionLost alice",
                    "rejected ownedByAnotherClient mallory",
                    "connected - alice",
                    "disconnected connectionLost alice",
                ])
            }
        }
    }

    @Test func withoutTheLedgerEveryConnectIsRefusedAndHeldClientsAreDisconnected() async throws {
        try await offPool {
            try withMosquitto("mq-away") { custody, mosquitto in
                let holder = try paho(["--port", "\(mosquitto.port)", "--id", "held", "--user", "alice"])
                try holder.waitForOutput(containing: "CONNACK rc=0")
                custody.stop()
                // Custody recorded the end; the plugin lost its link and disconnects the client.
                try holder.waitForOutput(containing: "DISCONNECT")
                let last = try custody.events().last
                #expect(last?.sessionName.value == "held")
                #expect(last?.kind == .disconnected(.serverInitiatedDisconnect))
                let (status, output) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-u", "alice", "-i", "later", "-t", "t", "-m", "x"])
                #expect(status != 0)
                #expect(output.contains("not authorised"), "\(output)")
                #expect(mosquitto.log.contains("CONNECT of later refused: the ledger could not decide it"), "\(mosquitto.log)")
                // The ledger back on the same socket: the plugin connects again with the next CONNECT.
                let again = try RunningCustody(
                    "mq-away-again", arguments: ["--ledger-socket", socketPath(custody), "--connects-per-second-per-session", "0"],
                    directory: custody.directory)
                defer { again.stop() }
                let (back, backOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-u", "alice", "-i", "later", "-t", "t", "-m", "x"])
                #expect(back == 0, "\(backOutput)")
                try again.waitForEvent { $0.sessionName.value == "later" && $0.kind == .connected }
            }
        }
    }

    @Test func custodysPasswordFileDecidesWhoConnectsThroughMosquitto() async throws {
        try await offPool {
            let passwords = scratchDirectory("mq-passwd") + ".passwd"
            let (made, _, madeError) = try run("/usr/bin/mosquitto_passwd", ["-c", "-b", passwords, "alice", "s3cret"])
            try #require(made == 0, "mosquitto_passwd: \(madeError)")
            defer { try? FileManager.default.removeItem(atPath: passwords) }
            try withMosquitto("mq-passwd", custodyArguments: ["--password-file", passwords]) { custody, mosquitto in
                let (wrong, wrongOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-u", "alice", "-P", "guess", "-i", "pw1", "-t", "t", "-m", "x"])
                #expect(wrong != 0)
                #expect(wrongOutput.contains("not authorised"), "\(wrongOutput)")
                let (right, rightOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-u", "alice", "-P", "s3cret", "-i", "pw2", "-t", "t", "-m", "x"])
                #expect(right == 0, "\(rightOutput)")
                try custody.waitForEvent { $0.sessionName.value == "pw2" && $0.kind.name == "disconnected" }
                let decided = try custody.events().filter { $0.kind.name != "disconnected" }.map { "\($0.kind.name) \($0.kind.reasonName ?? "-") \($0.sessionName)" }
                #expect(decided == ["rejected authenticationFailed pw1", "connected - pw2"])
            }
        }
    }

    /// A token is checked at once (no hop off the socket's thread), so a JSON Web Token in the
    /// password signs in through Mosquitto too; a refused one is recorded as
    /// `rejected(clientAuthenticationError)`.
    @Test func aTokenInThePasswordSignsInThroughMosquitto() async throws {
        let keys = try await offPool { try TestSigningKeys() }
        let good = try await keys.token(TestClaims(subject: "device-1"), alg: "RS256")
        let expired = try await keys.token(TestClaims(subject: "device-1", expiresIn: -5), alg: "RS256")
        try await offPool {
            let config = scratchDirectory("mq-jwt") + ".yaml"
            try keys.authenticationSection(clockSkewSeconds: 0).write(toFile: config, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: config) }
            try withMosquitto("mq-jwt", custodyArguments: ["--config", config]) { custody, mosquitto in
                let (refused, refusedOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-u", "device-1", "-P", expired, "-i", "tok1", "-t", "t", "-m", "x"])
                #expect(refused != 0)
                #expect(refusedOutput.contains("not authorised"), "\(refusedOutput)")
                let (signed, signedOutput) = try mosquittoClient(
                    "mosquitto_pub", port: mosquitto.port, ["-u", "device-1", "-P", good, "-i", "tok2", "-t", "t", "-m", "x"])
                #expect(signed == 0, "\(signedOutput)")
                try custody.waitForEvent { $0.sessionName.value == "tok2" && $0.kind.name == "disconnected" }
                let decided = try custody.events().filter { $0.kind.name != "disconnected" }
                    .map { "\($0.kind.name) \($0.kind.reasonName ?? "-") \($0.sessionName) \($0.authenticationName)" }
                #expect(decided == ["rejected clientAuthenticationError tok1 device-1", "connected - tok2 device-1"])
            }
        }
    }

    @Test func aDeniedSubscribeAndADeniedPublishThroughThePlugin() async throws {
        try await offPool {
            let acl = scratchDirectory("mq-acl") + ".acl"
            try "user alice\ntopic readwrite fleet/#\n\nuser bob\ntopic read #\n".write(toFile: acl, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: acl) }
            try withMosquitto("mq-acl", custodyArguments: ["--acl-file", acl]) { custody, mosquitto in
                let watcher = try paho(["--port", "\(mosquitto.port)", "--id", "watch", "--user", "bob", "--subscribe", "#"])
                try watcher.waitForOutput(containing: "SUBACK 1")
                // A denied subscribe: SUBACK 0x87.
                let denied = try paho(["--port", "\(mosquitto.port)", "--id", "snoop", "--user", "alice", "--subscribe", "secrets/#"])
                try denied.waitForOutput(containing: "SUBACK 135")
                // A denied publish: PUBACK 0x87, and nobody gets it; an allowed one goes through.
                let secret = try paho(["--port", "\(mosquitto.port)", "--id", "leak", "--user", "alice", "--publish", "secrets/plan"])
                try secret.waitForOutput(containing: "PUBACK rc=135")
                let allowed = try paho(["--port", "\(mosquitto.port)", "--id", "truck", "--user", "alice", "--publish", "fleet/truck-1"])
                try allowed.waitForOutput(containing: "PUBACK rc=0")
                try watcher.waitForOutput(containing: "MESSAGE fleet/truck-1 x")
                #expect(!watcher.output.contains("secrets/plan"))
                try custody.waitForLog("subscribe denied", "secrets/#")
                try custody.waitForLog("publish denied", "secrets/plan")
            }
        }
    }
}

/// The ledger socket a running custody serves (from its start-up line).
func socketPath(_ custody: RunningCustody) throws -> String {
    guard let line = custody.stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: ledger socket ") }),
        let path = line.split(separator: " ").dropFirst(3).first
    else { throw TestFailure.unexpected("no ledger socket line in \(custody.stdout)") }
    return String(path)
}
