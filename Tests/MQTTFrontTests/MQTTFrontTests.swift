import Foundation
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// End to end: the real `custody` binary on 127.0.0.1 with its own ledger, driven by paho-mqtt,
// mosquitto_pub/sub and a raw socket client. Waits are for events, never fixed sleeps.


/// The CONNACK a v5 client should get; a success also lists the broker's capabilities.
private func connack(_ code: MQTTReasonCode, present: Bool = false, _ properties: [MQTTProperty] = []) -> MQTTConnAck {
    MQTTConnAck(
        sessionPresent: present, reasonCode: code,
        properties: MQTTProperties(code == .success ? properties + capabilities : properties))
}

@Suite("MQTT front end to end", .serialized)
struct MQTTFrontEndToEndTests {
    /// The seed's scenario: one client (`ipv4=127.0.0.1`) holds two sessions at once.
    @Test func oneClientHoldsTwoSessionsAtOnce() async throws {
        try await offPool {
            try withCustody("seed") { custody in
                let first = try paho(["--port", "\(custody.port)", "--id", "sessionId1", "--user", "ipv4=127.0.0.1"])
                let second = try paho(["--port", "\(custody.port)", "--id", "sessionId2", "--user", "ipv4=127.0.0.1"])
                defer { first.stop(); second.stop() }
                try first.waitForOutput(containing: "CONNACK rc=0 present=0")
                try second.waitForOutput(containing: "CONNACK rc=0 present=0")
                let connected = try custody.events().filter { $0.kind == .connected }
                #expect(Set(connected.map(\.sessionName.value)) == ["sessionId1", "sessionId2"])
                #expect(connected.allSatisfy { $0.authenticationName.value == "ipv4=127.0.0.1" })
                // Both still hold their sessions: a raw client of another identity is refused for each.
                for name in ["sessionId1", "sessionId2"] {
                    let intruder = try RawClient(port: custody.port)
                    #expect(try intruder.connect(name, user: "ipv4=10.0.0.1") == connack(.notAuthorized))
                }
                #expect(!first.output.contains("DISCONNECT") && !second.output.contains("DISCONNECT"))
            }
        }
    }

    /// R4: the same identity connecting again takes the session over; the old connection
    /// hears 0x8E, the new one finds its session present.
    @Test func takeoverBySameIdentity() async throws {
        try await offPool {
            try withCustody("takeover", fastReconnects) { custody in
                let old = try paho(["--port", "\(custody.port)", "--id", "dev-session", "--user", "Device", "--clean", "0", "--expiry", "60"])
                defer { old.stop() }
                try old.waitForOutput(containing: "CONNACK rc=0 present=0")
                // Same identity, other case: authentication names compare case-insensitively.
                let new = try RawClient(port: custody.port)
                #expect(try new.connect("dev-session", user: "device", clean: false, expiry: 60) == connack(.success, present: true))
                try old.waitForOutput(containing: "DISCONNECT rc=142")
                let events = try custody.events()
                let takenOver = events.filter { $0.kind == .disconnected(.sessionTakenOver) }
                #expect(takenOver.count == 1)
                #expect(takenOver.first?.authenticationName.value == "Device")
                // The new connection is alive and well.
                try new.send(.pingreq)
                #expect(try new.receive() == .pingresp)
            }
        }
    }

    /// R4 in order: the old connection's DISCONNECT 0x8E and close happen before the new
    /// CONNACK is written (on loopback they are in the old socket's buffer by then).
    @Test func takeoverEndsTheOldConnectionBeforeTheNewConnAck() async throws {
        try await offPool {
            try withCustody("takeover-order", fastReconnects) { custody in
                let old = try RawClient(port: custody.port, version: .mqtt3_1_1)
                #expect(try old.connect("order", user: "dev", clean: true, version: .mqtt3_1_1) == MQTTConnAck(reasonCode: .success))
                let new = try RawClient(port: custody.port)
                // The old session had expiry 0 (3.1.1 clean session): nothing is present.
                #expect(try new.connect("order", user: "dev", clean: false, expiry: 30) == connack(.success, present: false))
                // 3.1.1 has no server DISCONNECT: the old connection is just closed, already.
                #expect(try old.receiveUntilClosed(timeout: 0).isEmpty)
                let events = try custody.events().map(\.kind)
                #expect(events == [.connected, .disconnected(.sessionTakenOver), .connected])
            }
        }
    }

    /// R6: another identity is refused while the owner is connected and after it left,
    /// as long as the session has not expired; the owner is untouched.
    @Test func anotherIdentityIsRefusedWhileTheSessionLives() async throws {
        try await offPool {
            try withCustody("r6", fastReconnects) { custody in
                let alice = try RawClient(port: custody.port)
                #expect(try alice.connect("shared", user: "alice", clean: false, expiry: 60) == connack(.success))
                let bob = try RawClient(port: custody.port)
                #expect(try bob.connect("shared", user: "bob") == connack(.notAuthorized))
                #expect(try bob.receive() == nil)  // and the connection is closed
                let bob3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                let refusal3 = try bob3.connect("shared", user: "bob", version: .mqtt3_1_1)
                #expect(MQTTConnectReturnCode(refusal3.reasonCode) == .notAuthorized)
                // mosquitto_pub (3.1.1) is refused the same way.
                let (status, _, error) = try run(
                    "/usr/bin/mosquitto_pub", ["-p", "\(custody.port)", "-h", "127.0.0.1", "-i", "shared", "-u", "bob", "-t", "t", "-m", "x"])
                #expect(status != 0)
                #expect(error.lowercased().contains("not authori"), "\(error)")
                // Alice is untouched.
                try alice.send(.pingreq)
                #expect(try alice.receive() == .pingresp)
                // Alice leaves; her session lives on for 60 s, so bob is still refused.
                try alice.send(.disconnect(MQTTDisconnect()))
                #expect(try alice.receive() == nil)
                try custody.waitForEvent { $0.kind == .disconnected(.clientInitiatedDisconnect) }
                let later = try RawClient(port: custody.port)
                #expect(try later.connect("shared", user: "bob") == connack(.notAuthorized))
                let rejected = try custody.events().filter { $0.kind == .rejected(.ownedByAnotherClient) }
                #expect(rejected.count == 4)
            }
        }
    }

    /// After the owner's session expires, the name is free for anyone.
    @Test func sessionNameIsFreeAfterExpiry() async throws {
        try await offPool {
            try withCustody("expiry", fastReconnects) { custody in
                let alice = try RawClient(port: custody.port)
                #expect(try alice.connect("short", user: "alice", clean: false, expiry: 1) == connack(.success))
                try alice.send(.disconnect(MQTTDisconnect()))
                #expect(try alice.receive() == nil)
                let left = Date()
                let early = try RawClient(port: custody.port)
                #expect(try early.connect("short", user: "bob") == connack(.notAuthorized))
                try custody.waitForEvent(timeout: 10) { $0.kind == .expired(.sessionExpired) && $0.sessionName.value == "short" }
                #expect(Date().timeIntervalSince(left) > 0.8)
                let bob = try RawClient(port: custody.port)
                #expect(try bob.connect("short", user: "bob") == connack(.success))
            }
        }
    }

    /// R3 with `--max-sessions-per-client 2`.
    @Test func thirdSessionOverTheCapIsQuotaExceeded() async throws {
        try await offPool {
            try withCustody("cap", ["--max-sessions-per-client", "2"] + fastReconnects) { custody in
                let one = try RawClient(port: custody.port)
                #expect(try one.connect("cap-1", user: "dev") == connack(.success))
                let two = try RawClient(port: custody.port)
                #expect(try two.connect("cap-2", user: "dev", clean: false, expiry: 300) == connack(.success))
                let three = try RawClient(port: custody.port)
                #expect(try three.connect("cap-3", user: "dev") == connack(.quotaExceeded))
                let three3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                let code = try three3.connect("cap-3", user: "dev", version: .mqtt3_1_1).reasonCode
                #expect(MQTTConnectReturnCode(code) == .notAuthorized)
                // A session that ends with its connection frees a place at once.
                try one.send(.disconnect(MQTTDisconnect()))
                #expect(try one.receive() == nil)
                try custody.waitForEvent { $0.kind == .disconnected(.clientInitiatedDisconnect) && $0.sessionName.value == "cap-1" }
                let again = try RawClient(port: custody.port)
                #expect(try again.connect("cap-3", user: "dev") == connack(.success))
            }
        }
    }

    /// A malformed packet closes its own connection with the decoder's reason code and a
    /// log line; other connections carry on.
    @Test func malformedPacketClosesOnlyThatConnection() async throws {
        try await offPool {
            try withCustody("malformed") { custody in
                let bad = try RawClient(port: custody.port)
                #expect(try bad.connect("bad", user: "dev") == connack(.success))
                let good = try RawClient(port: custody.port)
                #expect(try good.connect("good", user: "dev") == connack(.success))
                try bad.sendRaw([0x36, 0x03, 0x00, 0x01, 0x61])  // PUBLISH with QoS 3
                #expect(try bad.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .malformedPacket))])
                try good.send(.pingreq)
                #expect(try good.receive() == .pingresp)
                try custody.waitForLog("session_name=bad", "Malformed Packet", "QoS 3")
                let ended = try custody.waitForEvent { $0.sessionName.value == "bad" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.clientError))
            }
        }
    }

    /// A packet over the announced Maximum Packet Size is refused from its fixed header (0x95).
    @Test func packetTooLargeIsRefusedFromItsHeader() async throws {
        try await offPool {
            try withCustody("too-large") { custody in
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("big", user: "dev") == connack(.success))
                // PUBLISH QoS 0 announcing 2 MiB: remaining length 0x80 0x80 0x80 0x01.
                try client.sendRaw([0x30, 0x80, 0x80, 0x80, 0x01, 0x00, 0x01, 0x61])
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
                try custody.waitForLog("session_name=big", "Packet too large")
            }
        }
    }

    /// Garbage instead of a CONNECT: the connection closes, nothing is recorded.
    @Test func garbageBeforeConnectJustCloses() async throws {
        try await offPool {
            try withCustody("garbage") { custody in
                let raw = try RawClient(port: custody.port)
                try raw.sendRaw(Array("GET / HTTP/1.1\r\n\r\n".utf8))
                #expect(try raw.receiveUntilClosed().isEmpty)
                try custody.waitForLog("closed", "before CONNECT")
                #expect(try custody.events().isEmpty)
            }
        }
    }

    /// Keep-alive 1 s and silence: DISCONNECT 0x8D after 1.5 s, recorded as ConnectionLost.
    @Test func keepAliveTimeout() async throws {
        try await offPool {
            try withCustody("keepalive") { custody in
                let quiet = try RawClient(port: custody.port)
                let start = Date()
                #expect(try quiet.connect("quiet", user: "dev", keepAlive: 1) == connack(.success))
                #expect(try quiet.receiveUntilClosed(timeout: 10) == [.disconnect(MQTTDisconnect(reasonCode: .keepAliveTimeout))])
                #expect(Date().timeIntervalSince(start) >= 1.4)
                let ended = try custody.waitForEvent { $0.sessionName.value == "quiet" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.connectionLost))
            }
        }
    }

    /// No CONNECT within --connect-timeout-seconds: closed.
    @Test func connectTimeout() async throws {
        try await offPool {
            try withCustody("connect-timeout", ["--connect-timeout-seconds", "1"]) { custody in
                let idle = try RawClient(port: custody.port)
                let start = Date()
                #expect(try idle.receiveUntilClosed(timeout: 10).isEmpty)
                #expect(Date().timeIntervalSince(start) >= 0.9)
                try custody.waitForLog("no CONNECT in time")
            }
        }
    }

    /// R1: an empty ClientID is refused in both versions, even with clean session.
    @Test func emptyClientIdentifierIsRefused() async throws {
        try await offPool {
            try withCustody("r1") { custody in
                let v5 = try RawClient(port: custody.port)
                #expect(try v5.connect("", user: "dev") == connack(.clientIdentifierNotValid))
                let v3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                let code = try v3.connect("", version: .mqtt3_1_1).reasonCode
                #expect(MQTTConnectReturnCode(code) == .identifierRejected)
                let rejected = try custody.waitForEvent { $0.kind == .rejected(.invalidSessionName) }
                #expect(rejected.sessionName.value == "")
            }
        }
    }

    /// A second CONNECT is a protocol error: DISCONNECT 0x82, recorded as ClientError.
    @Test func secondConnectIsAProtocolError() async throws {
        try await offPool {
            try withCustody("second-connect") { custody in
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("twice", user: "dev") == connack(.success))
                try client.send(.connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "twice", userName: "dev")))
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
                let ended = try custody.waitForEvent { $0.sessionName.value == "twice" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.clientError))
            }
        }
    }

    /// The interval in force comes back in the CONNACK when it is not what was asked, and a
    /// v5 DISCONNECT may shorten it to 0 (the name is free at once) but not raise it from 0.
    @Test func sessionExpiryIntervalIsCappedAndChangedByDisconnect() async throws {
        try await offPool {
            try withCustody("interval", ["--max-session-expiry-hours", "1"]) { custody in
                let alice = try RawClient(port: custody.port)
                #expect(try alice.connect("keep", user: "alice", clean: false, expiry: 100_000)
                    == connack(.success, [.sessionExpiryInterval(3600)]))
                try alice.send(.disconnect(MQTTDisconnect(properties: [.sessionExpiryInterval(0)])))
                #expect(try alice.receive() == nil)
                let bob = try RawClient(port: custody.port)
                #expect(try bob.connect("keep", user: "bob") == connack(.success))

                let carol = try RawClient(port: custody.port)
                #expect(try carol.connect("brief", user: "carol", expiry: 0) == connack(.success))
                try carol.send(.disconnect(MQTTDisconnect(properties: [.sessionExpiryInterval(30)])))
                #expect(try carol.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
                let ended = try custody.waitForEvent { $0.sessionName.value == "brief" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.clientError))
                #expect(ended.expiryInterval == 0)
            }
        }
    }

    /// v3.1.1 clean session 0 gets the policy's maximum; the session is present on return.
    @Test func v3PersistentSessionIsPresentOnReturn() async throws {
        try await offPool {
            try withCustody("v3-persistent", fastReconnects) { custody in
                let first = try RawClient(port: custody.port, version: .mqtt3_1_1)
                #expect(try first.connect("v3", user: "dev", clean: false, version: .mqtt3_1_1) == MQTTConnAck(sessionPresent: false, reasonCode: .success))
                try first.send(.disconnect(MQTTDisconnect()))
                #expect(try first.receive() == nil)
                let ended = try custody.waitForEvent { $0.kind == .disconnected(.clientInitiatedDisconnect) }
                #expect(ended.expiryInterval == 3600)
                let second = try RawClient(port: custody.port, version: .mqtt3_1_1)
                #expect(try second.connect("v3", user: "dev", clean: false, version: .mqtt3_1_1) == MQTTConnAck(sessionPresent: true, reasonCode: .success))
            }
        }
    }

    /// mosquitto_pub (5.0, QoS 1) gets through CONNECT, PUBLISH/PUBACK and DISCONNECT.
    @Test func mosquittoPubCompletesAQoS1Publish() async throws {
        try await offPool {
            try withCustody("mosquitto-pub") { custody in
                let (status, _, error) = try run(
                    "/usr/bin/mosquitto_pub",
                    ["-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "pub-1", "-u", "dev", "-t", "a/b", "-m", "hi", "-q", "1"])
                #expect(status == 0, "\(error)")
                let ended = try custody.waitForEvent { $0.sessionName.value == "pub-1" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.clientInitiatedDisconnect))
            }
        }
    }

    /// Pub/sub through the broker: mosquitto_sub (5.0, QoS 1, wildcard) gets what mosquitto_pub sends.
    @Test func qos1PublishSubscribeWithMosquitto() async throws {
        try await offPool {
            try withCustody("pubsub", fastReconnects) { custody in
                // Line-buffered, so that the debug line about the SUBACK shows as it happens.
                let subscriber = try Background("/usr/bin/stdbuf", [
                    "-oL", "/usr/bin/mosquitto_sub", "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "sub-1", "-u", "dev", "-t", "sensors/#",
                    "-q", "1", "-C", "2", "-v", "-d", "-W", "20",
                ])
                defer { subscriber.stop() }
                try subscriber.waitForOutput(containing: "received SUBACK")
                for (topic, value) in [("sensors/kitchen/t", "21.5"), ("sensors/hall/t", "19.0")] {
                    let (status, _, error) = try run("/usr/bin/mosquitto_pub", [
                        "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "pub-1", "-u", "dev", "-t", topic,
                        "-m", value, "-q", "1",
                    ])
                    #expect(status == 0, "\(error)")
                }
                #expect(try subscriber.waitForExit(timeout: 20) == 0)
                let lines = subscriber.output.split(separator: "\n").filter { $0.hasPrefix("sensors/") }
                #expect(lines == ["sensors/kitchen/t 21.5", "sensors/hall/t 19.0"])
            }
        }
    }

    /// A retained message (3.1.1 and 5.0 clients alike) reaches a subscriber that comes later.
    @Test func retainedMessageReachesALaterSubscriber() async throws {
        try await offPool {
            try withCustody("retained") { custody in
                let (status, _, error) = try run("/usr/bin/mosquitto_pub", [
                    "-p", "\(custody.port)", "-h", "127.0.0.1", "-i", "door", "-u", "dev", "-t", "status/door", "-m", "open",
                    "-q", "1", "-r",
                ])
                #expect(status == 0, "\(error)")
                let (subStatus, output, subError) = try run("/usr/bin/mosquitto_sub", [
                    "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "panel", "-u", "dev", "-t", "status/#",
                    "-C", "1", "-v", "-W", "10",
                ])
                #expect(subStatus == 0, "\(subError)")
                #expect(output == "status/door open\n")
            }
        }
    }

    /// A persistent session (v5, expiry 300 s) that is offline gets its QoS 1 and QoS 2
    /// messages after the broker restarts: they were acknowledged, so they are on disk.
    @Test func offlinePersistentSessionGetsItsMessagesAfterRestart() async throws {
        try await offPool {
            let first = try RunningCustody("restart", arguments: fastReconnects)
            defer { first.cleanUp() }
            let subscribe = try paho([
                "--port", "\(first.port)", "--id", "inbox", "--user", "dev", "--clean", "0", "--expiry", "300",
                "--subscribe", "alerts/#", "--qos", "2",
            ])
            try subscribe.waitForOutput(containing: "SUBACK 2")
            subscribe.stop()  // killed: the session lives on, offline
            try first.waitForEvent { $0.sessionName.value == "inbox" && $0.kind == .disconnected(.connectionLost) }
            for (qos, message) in [("1", "smoke"), ("2", "evacuate")] {
                let (status, _, error) = try run("/usr/bin/mosquitto_pub", [
                    "-p", "\(first.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "alarm", "-u", "dev", "-t", "alerts/fire",
                    "-m", message, "-q", qos,
                ])
                #expect(status == 0, "\(error)")
            }
            first.stop()
            let second = try RunningCustody("restart", directory: first.directory)
            defer { second.stop() }
            let resume = try paho(["--port", "\(second.port)", "--id", "inbox", "--user", "dev", "--clean", "0", "--expiry", "300"])
            defer { resume.stop() }
            try resume.waitForOutput(containing: "CONNACK rc=0 present=1")
            try resume.waitForOutput(containing: "MESSAGE alerts/fire evacuate qos=2")
            #expect(resume.output.contains("MESSAGE alerts/fire smoke qos=1"), "\(resume.output)")
        }
    }

    /// Wills go to the broker: a lost connection publishes its will, a normal DISCONNECT discards it.
    @Test func willIsPublishedOnLossAndDiscardedOnDisconnect() async throws {
        try await offPool {
            try withCustody("wills") { custody in
                let watcher = try paho(["--port", "\(custody.port)", "--id", "watcher", "--user", "ops", "--subscribe", "wills/#"])
                defer { watcher.stop() }
                try watcher.waitForOutput(containing: "SUBACK 1")
                let polite = try RawClient(port: custody.port)
                let politeWill = MQTTWill(topic: "wills/polite", payload: ByteBuffer(string: "discarded"), qos: .atLeastOnce)
                #expect(try polite.connect("polite", user: "dev", will: politeWill) == connack(.success))
                try polite.send(.disconnect(MQTTDisconnect()))
                #expect(try polite.receive() == nil)
                let lost = try RawClient(port: custody.port, version: .mqtt3_1_1)
                let lostWill = MQTTWill(topic: "wills/lost", payload: ByteBuffer(string: "offline"), qos: .atLeastOnce)
                #expect(try lost.connect("lost", user: "dev", version: .mqtt3_1_1, will: lostWill).reasonCode == .success)
                lost.drop()
                try watcher.waitForOutput(containing: "MESSAGE wills/lost offline qos=1")
                #expect(!watcher.output.contains("discarded"), "\(watcher.output)")
            }
        }
    }

    /// SIGTERM: connected clients hear 0x8B, and their ends are recorded before the ledger closes.
    @Test func shutdownDisconnectsClientsAndRecordsIt() async throws {
        try await offPool {
            try withCustody("shutdown") { custody in
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("stay", user: "dev", clean: false, expiry: 600) == connack(.success))
                custody.stop()
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .serverShuttingDown))])
                #expect(custody.process.terminationStatus == 0)
                let ended = try custody.events().last
                #expect(ended?.kind == .disconnected(.serverInitiatedDisconnect))
                #expect(custody.stdout.contains("SIGTERM received"))
            }
        }
    }
}

/// What a granting v5 CONNACK of `custody` says about its broker, after the interval: up to 100
/// QoS 1/2 PUBLISHes in flight, topic aliases 1-10, packets up to 512 KiB. Everything else (QoS 2,
/// retain, wildcards, subscription identifiers, shared subscriptions) is available, which is
/// what leaving it out says.
let capabilities: [MQTTProperty] = [.receiveMaximum(100), .topicAliasMaximum(10), .maximumPacketSize(512 << 10)]
