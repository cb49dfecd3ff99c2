import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Authorization end to end (issue 14, DESIGN.md §5): custody with a configuration file of
// client groups, topic spaces and permission bindings (or a Mosquitto acl file), real
// clients (paho-mqtt, mosquitto_pub/sub) over 127.0.0.1.

/// A configuration file in a fresh directory; `passwords`: users of a password file (all
/// with the password "pw"), needed when `yaml` registers clients (a registered client must
/// prove who it is).
private func configuration(_ label: String, _ yaml: String, passwords: [String] = []) throws -> String {
    let directory = scratchDirectory("authz-\(label)")
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    var text = yaml
    if !passwords.isEmpty {
        let file = directory + "/passwords"
        for (index, user) in passwords.enumerated() {
            let (status, _, err) = try run(
                "/usr/bin/mosquitto_passwd", (index == 0 ? ["-c"] : []) + ["-b", file, user, "pw"])
            try #require(status == 0, "mosquitto_passwd: \(err)")
        }
        text += "\npasswordFile: passwords\n"
    }
    let path = directory + "/custody.yaml"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

private func startCustody(_ label: String, config: String, _ extra: [String] = []) throws -> RunningCustody {
    try RunningCustody(label, arguments: ["--config", config, "--metrics", "127.0.0.1:0"] + extra)
}

/// `custody_authorization_denied_total{action="ACTION"}` now.
private func denials(_ custody: RunningCustody, _ action: String) throws -> Int {
    let text = try scrape(try metricsPort(custody))
    let prefix = "custody_authorization_denied_total{action=\"\(action)\"} "
    guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
    return Int(Double(line.dropFirst(prefix.count)) ?? -1)
}

private func mosquittoPub(_ custody: RunningCustody, _ arguments: [String]) throws -> (Int32, String) {
    let (status, out, err) = try run(
        "/usr/bin/mosquitto_pub", ["-h", "127.0.0.1", "-p", "\(custody.port)"] + arguments, timeout: 15)
    return (status, out + err)
}

@Suite("Authorization end to end", .serialized)
struct AuthorizationEndToEndTests {
    /// Event Grid's first access-control example: each factory area's machines talk among
    /// themselves; another area's machines may neither publish nor subscribe there. The
    /// groups select clients by the registry's `area` attribute.
    @Test func eventGridExampleOneFactoryAreas() async throws {
        try await offPool {
            let config = try configuration("example1", """
                clients:
                  - { authenticationName: Area1_Machine1, attributes: { area: area1 } }
                  - { authenticationName: Area1_Machine2, attributes: { area: area1 } }
                  - { authenticationName: Area2_Machine1, attributes: { area: area2 } }
                  - { authenticationName: Area2_Machine2, attributes: { area: area2 } }
                clientGroups:
                  - { name: Area1Machines, query: "attributes.area = 'area1'" }
                  - { name: Area2Machines, query: "attributes.area = 'area2'" }
                topicSpaces:
                  - { name: Area1Messages, topicTemplates: ["areas/area1/machines/#"] }
                  - { name: Area2Messages, topicTemplates: ["areas/area2/machines/#"] }
                permissionBindings:
                  - { name: Area1-Pub, clientGroupName: Area1Machines, topicSpaceName: Area1Messages, permission: Publisher }
                  - { name: Area1-Sub, clientGroupName: Area1Machines, topicSpaceName: Area1Messages, permission: Subscriber }
                  - { name: Area2-Pub, clientGroupName: Area2Machines, topicSpaceName: Area2Messages, permission: Publisher }
                  - { name: Area2-Sub, clientGroupName: Area2Machines, topicSpaceName: Area2Messages, permission: Subscriber }
                """, passwords: ["Area1_Machine1", "Area1_Machine2", "Area2_Machine1", "Area2_Machine2"])
            let custody = try startCustody("example1", config: config)
            defer { custody.cleanUp() }
            #expect(custody.stdout.contains("custody: authorization: enforced client_groups=3 topic_spaces=2 permission_bindings=4"))
            let a1m2 = try FeatureClient(custody, "a1m2", user: "Area1_Machine2", password: "pw")
            let a2m2 = try FeatureClient(custody, "a2m2", user: "Area2_Machine2", password: "pw")
            let a1m1 = try FeatureClient(custody, "a1m1", user: "Area1_Machine1", password: "pw")
            defer { a1m2.cleanUp(); a2m2.cleanUp(); a1m1.cleanUp() }
            // One SUBSCRIBE, two filters: the allowed one granted, the other 0x87.
            #expect(try a1m2.subscribe("areas/area1/machines/#") == [1])
            #expect(try a1m2.subscribe("areas/area2/machines/#", qos: 0) == [135])
            #expect(try a2m2.subscribe("areas/area2/machines/#") == [1])

            #expect(try a1m1.publish("areas/area1/machines/machine1", "hello-area1").ack == 0)
            try a1m2.waitForMessage("areas/area1/machines/machine1", "hello-area1")
            // Into another area: PUBACK 0x87, and nobody gets it.
            #expect(try a1m1.publish("areas/area2/machines/machine1", "intruder").ack == 135)
            #expect(try a1m1.publish("areas/area2/machines/machine1", "intruder-qos0", qos: 0).ack == nil)
            let (status, output) = try mosquittoPub(custody, [
                "-V", "mqttv5", "-i", "a2m1", "-u", "Area2_Machine1", "-P", "pw", "-q", "1",
                "-t", "areas/area2/machines/machine1", "-m", "from-area2",
            ])
            #expect(status == 0, "\(output)")
            try a2m2.waitForMessage("areas/area2/machines/machine1", "from-area2")
            #expect(!a2m2.messages.contains { $0.payload.hasPrefix("intruder") })
            #expect(!a1m2.messages.contains { $0.topic.hasPrefix("areas/area2") })
            // The connections stay up (v5 answers denials, it does not disconnect).
            #expect(a1m1.isRunning && a1m2.isRunning)
            #expect(try denials(custody, "publish") == 2)
            #expect(try denials(custody, "subscribe") == 1)
            _ = try custody.waitForLog("publish denied", "areas/area2/machines/machine1")
            _ = try custody.waitForLog("subscribe denied", "areas/area2/machines/#")
        }
    }

    /// Event Grid's second example: machines publish telemetry and receive commands; the
    /// management clients publish commands and receive telemetry, nothing else.
    @Test func eventGridExampleTwoMachinesAndManagement() async throws {
        try await offPool {
            let config = try configuration("example2", """
                clients:
                  - { authenticationName: Area1_Machine1, attributes: { area: area1, role: machine } }
                  - { authenticationName: Area1_Mgmt1, attributes: { area: area1, role: [mgmt, operator] } }
                clientGroups:
                  - { name: Area1Machines, query: "attributes.area = 'area1' and attributes.role = 'machine'" }
                  - { name: Area1Mgmt, query: "attributes.area = 'area1' and attributes.role IN ['mgmt']" }
                topicSpaces:
                  - { name: Area1Telemetry, topicTemplates: ["areas/area1/machines/#"] }
                  - { name: Area1Commands, topicTemplates: ["areas/area1/mgmt/#"] }
                permissionBindings:
                  - { name: Area1Machines-Pub, clientGroupName: Area1Machines, topicSpaceName: Area1Telemetry, permission: Publisher }
                  - { name: Area1Machines-Sub, clientGroupName: Area1Machines, topicSpaceName: Area1Commands, permission: Subscriber }
                  - { name: Area1Mgmt-Pub, clientGroupName: Area1Mgmt, topicSpaceName: Area1Commands, permission: Publisher }
                  - { name: Area1Mgmt-Sub, clientGroupName: Area1Mgmt, topicSpaceName: Area1Telemetry, permission: Subscriber }
                """, passwords: ["Area1_Machine1", "Area1_Mgmt1"])
            let custody = try startCustody("example2", config: config)
            defer { custody.cleanUp() }
            let machine = try FeatureClient(custody, "machine", user: "Area1_Machine1", password: "pw")
            let mgmt = try FeatureClient(custody, "mgmt", user: "Area1_Mgmt1", password: "pw")
            defer { machine.cleanUp(); mgmt.cleanUp() }
            #expect(try machine.subscribe("areas/area1/mgmt/#") == [1])
            #expect(try machine.subscribe("areas/area1/machines/#") == [135])
            #expect(try mgmt.subscribe("areas/area1/machines/+") == [1])
            #expect(try mgmt.subscribe("areas/#") == [135])

            #expect(try machine.publish("areas/area1/machines/machine1", "temp=21").ack == 0)
            try mgmt.waitForMessage("areas/area1/machines/machine1", "temp=21")
            // A compromised machine cannot send commands.
            #expect(try machine.publish("areas/area1/mgmt/machine1", "reboot").ack == 135)
            let sub = try Background("/usr/bin/mosquitto_sub", [
                "-h", "127.0.0.1", "-p", "\(custody.port)", "-V", "mqttv5", "-i", "mgmt-sub", "-u", "Area1_Mgmt1", "-P", "pw",
                "-t", "areas/area1/machines/#", "-v",
            ])
            defer { sub.stop() }
            try custody.waitForEvent { $0.sessionName.value == "mgmt-sub" }
            #expect(try mgmt.publish("areas/area1/mgmt/machine1", "calibrate").ack == 0)
            try machine.waitForMessage("areas/area1/mgmt/machine1", "calibrate")
            #expect(!machine.messages.contains { $0.payload == "reboot" })
            #expect(try machine.publish("areas/area1/machines/machine1", "temp=22").ack == 0)
            try sub.waitForOutput(containing: "areas/area1/machines/machine1 temp=22")
        }
    }

    /// `${client.authenticationName}` gives each client its own topics; a name holding `+`
    /// (or `#`) gains nothing from it: the injection guard makes such a template match nothing.
    @Test func perClientTopicsAndTheInjectionGuard() async throws {
        try await offPool {
            let config = try configuration("per-client", """
                topicSpaces:
                  - { name: own, topicTemplates: ["devices/${client.authenticationName}/#"] }
                permissionBindings:
                  - { name: own-pub, clientGroupName: $all, topicSpaceName: own, permission: Publisher }
                  - { name: own-sub, clientGroupName: $all, topicSpaceName: own, permission: Subscriber }
                """)
            let custody = try startCustody("per-client", config: config)
            defer { custody.cleanUp() }
            let one = try FeatureClient(custody, "dev1-s", user: "dev1")
            let plus = try FeatureClient(custody, "plus-s", user: "+")
            let hash = try FeatureClient(custody, "hash-s", user: "#")
            defer { one.cleanUp(); plus.cleanUp(); hash.cleanUp() }
            #expect(try one.subscribe("devices/dev1/#") == [1])
            #expect(try one.subscribe("devices/dev2/#") == [135])
            #expect(try one.subscribe("devices/+/telemetry") == [135])
            // "+" would otherwise be granted devices/+/# (everyone's topics), "#" devices/#/#.
            #expect(try plus.subscribe("devices/+/#") == [135])
            #expect(try plus.subscribe("devices/dev1/telemetry") == [135])
            #expect(try hash.subscribe("devices/#") == [135])
            #expect(try plus.publish("devices/dev1/telemetry", "spoofed").ack == 135)
            #expect(try one.publish("devices/dev1/telemetry", "mine").ack == 0)
            try one.waitForMessage("devices/dev1/telemetry", "mine")
            #expect(try one.publish("devices/dev2/telemetry", "not-mine").ack == 135)
            #expect(!one.messages.contains { $0.payload == "spoofed" })
            let (out, _) = try custodyCheck(config, ["--client", "+", "--subscribe", "devices/+/#"])
            #expect(out.contains("deny: subscribe devices/+/#"), "\(out)")
        }
    }

    /// 3.1.1 has no negative PUBACK: a denied PUBLISH (QoS 0 or 1) ends the connection, recorded
    /// as `disconnected(clientAuthorizationError)`; a denied filter gets SUBACK 0x80.
    @Test func v311ClosesOnADeniedPublish() async throws {
        try await offPool {
            let config = try configuration("v311", """
                topicSpaces:
                  - { name: open-area, topicTemplates: ["public/#"] }
                permissionBindings:
                  - { name: pub, clientGroupName: $all, topicSpaceName: open-area, permission: Publisher }
                  - { name: sub, clientGroupName: $all, topicSpaceName: open-area, permission: Subscriber }
                """)
            let custody = try startCustody("v311", config: config)
            defer { custody.cleanUp() }
            for qos in [MQTTQoS.atMostOnce, .atLeastOnce] {
                let name = "v3-q\(qos.rawValue)"
                let client = try RawClient(port: custody.port, version: .mqtt3_1_1)
                _ = try client.connect(name, user: "dev", version: .mqtt3_1_1)
                try client.send(.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [
                    MQTTSubscription(topicFilter: "public/#", options: MQTTSubscriptionOptions(qos: .atLeastOnce)),
                    MQTTSubscription(topicFilter: "private/#", options: MQTTSubscriptionOptions(qos: .atLeastOnce)),
                ])))
                let suback = try client.receive()
                #expect(suback == .suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1, .unspecifiedError])))
                try client.send(.publish(MQTTPublish(
                    topicName: "private/x", payload: ByteBuffer(string: "no"), qos: qos,
                    packetIdentifier: qos == .atMostOnce ? nil : 7)))
                #expect(try client.receiveUntilClosed().isEmpty)
                let ended = try custody.waitForEvent { $0.sessionName.value == name && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.clientAuthorizationError))
            }
            let (status, output) = try mosquittoPub(custody, ["-V", "mqttv311", "-i", "v3-pub", "-q", "1", "-t", "private/y", "-m", "x"])
            #expect(status != 0, "\(output)")
            try custody.waitForEvent { $0.sessionName.value == "v3-pub" && $0.kind == .disconnected(.clientAuthorizationError) }
        }
    }

    /// A will topic the client may not publish to refuses the CONNECT: v5 0x87, 3.1.1 5,
    /// ledger `rejected(clientAuthorizationError)`.
    @Test func aWillTopicNotPublishableRefusesTheConnect() async throws {
        try await offPool {
            let config = try configuration("will", """
                topicSpaces:
                  - { name: status, topicTemplates: ["status/${client.authenticationName}"] }
                permissionBindings:
                  - { name: will-ok, clientGroupName: $all, topicSpaceName: status, permission: Publisher }
                """)
            let custody = try startCustody("will", config: config)
            defer { custody.cleanUp() }
            for version in [MQTTProtocolVersion.mqtt5, .mqtt3_1_1] {
                let bad = try RawClient(port: custody.port, version: version)
                let refused = try bad.connect(
                    "will-bad-\(version.rawValue)", user: "dev", version: version,
                    will: MQTTWill(topic: "status/someone-else", payload: ByteBuffer(string: "gone")))
                #expect(refused.reasonCode == .notAuthorized)
                let good = try RawClient(port: custody.port, version: version)
                let granted = try good.connect(
                    "will-good-\(version.rawValue)", user: "dev", version: version,
                    will: MQTTWill(topic: "status/dev", payload: ByteBuffer(string: "gone")))
                #expect(granted.reasonCode == .success)
            }
            let events = try custody.events()
            let rejected = events.filter { $0.kind == .rejected(.clientAuthorizationError) }.map(\.sessionName.value)
            #expect(Set(rejected) == ["will-bad-5", "will-bad-4"])
            #expect(try denials(custody, "will") == 2)
        }
    }

    /// A SIGHUP that narrows the rules removes the subscriptions no longer allowed: logged,
    /// counted, the connection stays up, and nothing more is delivered on them.
    @Test func reloadRemovesASubscriptionNoLongerAllowed() async throws {
        try await offPool {
            func rules(_ templates: String) -> String {
                """
                topicSpaces:
                  - { name: feed, topicTemplates: [\(templates)] }
                permissionBindings:
                  - { name: feed-pub, clientGroupName: $all, topicSpaceName: feed, permission: Publisher }
                  - { name: feed-sub, clientGroupName: $all, topicSpaceName: feed, permission: Subscriber }
                """
            }
            let config = try configuration("reload", rules("\"feed/a/#\", \"feed/b/#\""))
            let custody = try startCustody("reload", config: config)
            defer { custody.cleanUp() }
            let reader = try FeatureClient(custody, "reader")
            let writer = try FeatureClient(custody, "writer")
            defer { reader.cleanUp(); writer.cleanUp() }
            #expect(try reader.subscribe("feed/a/#") == [1])
            #expect(try reader.subscribe("feed/b/+") == [1])
            #expect(try writer.publish("feed/b/1", "before").ack == 0)
            try reader.waitForMessage("feed/b/1", "before")

            try rules("\"feed/a/#\"").write(toFile: config, atomically: true, encoding: .utf8)
            kill(custody.process.processIdentifier, SIGHUP)
            try custody.waitForOutput(containing: "subscriptions_revoked=1", timeout: 10)
            _ = try custody.waitForLog("subscriptions revoked", "feed/b/+")
            #expect(try writer.publish("feed/b/1", "after").ack == 135)
            #expect(try writer.publish("feed/a/1", "still").ack == 0)
            try reader.waitForMessage("feed/a/1", "still")
            #expect(!reader.messages.contains { $0.payload == "after" })
            #expect(reader.isRunning)
            let metrics = try scrape(try metricsPort(custody))
            #expect(metrics.contains("custody_authorization_subscriptions_revoked_total{reason=\"reload\"} 1"), "\(metrics)")

            // A query that does not parse is refused by the reload, naming the line and column.
            try (rules("\"feed/a/#\"") + "\nclientGroups:\n  - { name: broken, query: \"attributes.x = \" }\n")
                .write(toFile: config, atomically: true, encoding: .utf8)
            kill(custody.process.processIdentifier, SIGHUP)
            let failed = try custody.waitForOutput(containing: "reload failed", timeout: 10)
            #expect(failed.contains("custody.yaml:7: clientGroups[0].query: client group 'broken': column"), "\(failed)")
            #expect(try writer.publish("feed/a/2", "kept").ack == 0)
        }
    }

    /// Retained messages reach only allowed subscriptions; `$share/G/F` is checked on F;
    /// `$custody/...` keeps its own rule (event subscribers); a client flooding denials is
    /// counted in full but logged at most 10 times per 10 s, with what was suppressed.
    @Test func retainedSharedServerTopicsAndAThrottledLog() async throws {
        try await offPool {
            let config = try configuration("mixed", """
                eventSubscribers: [ops]
                topicSpaces:
                  - { name: own, topicTemplates: ["devices/${client.authenticationName}/#"] }
                  - { name: status, topicTemplates: ["status/#"] }
                permissionBindings:
                  - { name: own-sub, clientGroupName: $all, topicSpaceName: own, permission: Subscriber }
                  - { name: status-pub, clientGroupName: $all, topicSpaceName: status, permission: Publisher }
                  - { name: own-pub, clientGroupName: $all, topicSpaceName: own, permission: Publisher }
                """)
            let custody = try startCustody("mixed", config: config)
            defer { custody.cleanUp() }
            let dev1 = try FeatureClient(custody, "dev1-w", user: "dev1")
            defer { dev1.cleanUp() }
            let retainedAck = try dev1.publish("devices/dev1/state", "retained-1", retain: true).ack
            #expect(retainedAck == 0x10, "no subscriber yet: 0x10 No matching subscribers")
            let dev2 = try FeatureClient(custody, "dev2-r", user: "dev2")
            defer { dev2.cleanUp() }
            #expect(try dev2.subscribe("devices/dev1/state") == [135])
            #expect(try dev2.subscribe("devices/+/state") == [135])
            #expect(try dev2.subscribe("devices/dev2/#") == [1])
            #expect(try dev2.subscribe("$share/g/devices/dev2/x") == [1])
            #expect(try dev2.subscribe("$share/g/devices/dev1/#") == [135])
            let reader = try FeatureClient(custody, "dev1-r", user: "dev1")
            defer { reader.cleanUp() }
            #expect(try reader.subscribe("devices/dev1/#") == [1])
            try reader.waitForMessage("devices/dev1/state", "retained-1")
            #expect(!dev2.messages.contains { $0.payload == "retained-1" })
            // Lifecycle events: no binding grants them; the event subscriber may read them anyway.
            let ops = try FeatureClient(custody, "ops-1", user: "ops")
            defer { ops.cleanUp() }
            #expect(try ops.subscribe("$custody/events/#") == [1])
            #expect(try dev2.subscribe("$custody/events/#") == [135])

            let flooder = try RawClient(port: custody.port)
            _ = try flooder.connect("flooder", user: "dev3")
            for index in 0..<50 {
                try flooder.send(.publish(MQTTPublish(
                    topicName: "devices/dev1/cmd", payload: ByteBuffer(string: "\(index)"), qos: .atMostOnce)))
            }
            try flooder.send(.pingreq)
            #expect(try flooder.receive() == .pingresp)
            #expect(try denials(custody, "publish") == 50)
            let lines = custody.stderr.split(separator: "\n").filter { $0.contains("publish denied") }
            #expect(lines.count == 10, "\(lines.count) lines")
        }
    }

    /// Mosquitto's acl_file, with a `pattern` line (%u, %c) and the Paho interoperability
    /// suite's `test_subscribe_failure` (3.1.1: a filter that may not be subscribed gets 0x80).
    @Test func aclFileWithAPatternAndPahosSubscribeFailure() async throws {
        try await offPool {
            let directory = scratchDirectory("authz-acl")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try """
                # Everybody: the interoperability suite's topics; test/nosubscribe may be written, not read.
                pattern readwrite TopicA/#
                pattern write test/nosubscribe
                # Each client its own tree, by name and by session.
                pattern readwrite users/%u/#
                pattern read sessions/%c/inbox

                user admin
                topic read #
                """.write(toFile: directory + "/mosquitto.acl", atomically: true, encoding: .utf8)
            let custody = try RunningCustody("acl", arguments: ["--acl-file", directory + "/mosquitto.acl"])
            defer { custody.cleanUp() }
            #expect(custody.stdout.contains("custody: authorization: enforced by the acl file"))
            let paho = try FeatureClient(custody, "paho-v3", user: "alice", v3: true)
            defer { paho.cleanUp() }
            #expect(try paho.subscribe("test/nosubscribe", qos: 2) == [0x80])
            #expect(try paho.subscribe("TopicA/+", qos: 2) == [2])
            #expect(try paho.subscribe("users/alice/#") == [1])
            #expect(try paho.subscribe("users/bob/#") == [0x80])
            #expect(try paho.subscribe("sessions/paho-v3/inbox") == [1])
            let admin = try FeatureClient(custody, "admin-1", user: "admin")
            defer { admin.cleanUp() }
            #expect(try admin.subscribe("#") == [1])
            let (status, output) = try mosquittoPub(custody, ["-i", "alice-pub", "-u", "alice", "-t", "users/alice/x", "-m", "hi", "-q", "1"])
            #expect(status == 0, "\(output)")
            try paho.waitForMessage("users/alice/x", "hi")
            try admin.waitForMessage("users/alice/x", "hi")
            #expect(paho.isRunning)
        }
    }
}

/// `custody --check-config FILE ARGS`: (standard output, exit status).
private func custodyCheck(_ config: String, _ arguments: [String]) throws -> (String, Int32) {
    let (status, out, err) = try run(product: "custody", ["--check-config", config] + arguments)
    return (out + err, status)
}
