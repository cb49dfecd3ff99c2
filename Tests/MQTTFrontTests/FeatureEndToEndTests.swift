import Foundation
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Issue 4's MQTT features end to end: the real `custody` binary, each test its own (free port,
// temporary data directory), driven by paho-mqtt 2.x clients: retained messages (Retain
// Handling, empty payload, Retain As Published, restart, expiry), wills (unclean end,
// DISCONNECT 0x00/0x04, Will Delay Interval), shared subscriptions, Message Expiry Interval of
// queued messages, Subscription Identifiers, No Local, Payload Format Indicator and the
// properties passed through; and a PUBLISH right before a DISCONNECT. Waits are for events (client output, the ledger), except where a
// test must let a second pass to show that something did not happen or expired.

/// A paho-mqtt 2.x client driven line by line on standard input, one JSON command a line:
///
///     {"op": "sub", "filter": f, "qos": q, "rh": 0|1|2, "rap": bool, "nl": bool, "subid": n}
///     {"op": "pub", "topic": t, "payload": s | "hex": h, "qos": q, "retain": bool, "props": {...}}
///     {"op": "disconnect", "rc": code}
///
/// It reports on standard output, one JSON object a line (`props` as canonical JSON text,
/// CorrelationData in hex, UserProperty as pairs in order):
///
///     {"ev": "connack", "rc", "present", "props"}    {"ev": "sent", "op", "mid", "props"}
///     {"ev": "suback", "mid", "rcs"}                 {"ev": "puback", "mid", "rc"}
///     {"ev": "message", "topic", "payload", "hex", "qos", "retain", "props"}
///     {"ev": "disconnect", "rc"}
///
/// The configuration (JSON, first argument): port, id, user, v3, clean, expiry, and a will
/// {"topic", "payload", "qos", "retain", "props"}.
let featureScript = #"""
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

cfg = json.loads(sys.argv[1])
lock = threading.Lock()

def say(**event):
    with lock:
        print(json.dumps(event, sort_keys=True), flush=True)

def canonical(properties):
    if properties is None:
        return "{}"
    return json.dumps(properties.json(), sort_keys=True)

def build(packet_type, spec):
    if not spec:
        return None
    p = Properties(packet_type)
    for name, value in spec.items():
        if name == "CorrelationData":
            value = bytes.fromhex(value)
        elif name == "UserProperty":
            value = [tuple(pair) for pair in value]
        setattr(p, name, value)
    return p

def payload_of(spec):
    return bytes.fromhex(spec["hex"]) if "hex" in spec else spec.get("payload", "").encode()

v5 = not cfg.get("v3", False)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg["id"], protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                clean_session=None if v5 else bool(cfg.get("clean", True)))
c.username_pw_set(cfg.get("user", "dev"), cfg.get("password"))
c.max_inflight_messages_set(0)
will = cfg.get("will")
if will:
    c.will_set(will["topic"], payload_of(will), qos=will.get("qos", 1), retain=will.get("retain", False),
               properties=build(PacketTypes.WILLMESSAGE, will.get("props")))

def on_connect(client, userdata, flags, rc, properties):
    say(ev="connack", rc=rc.value, present=bool(flags.session_present), props=canonical(properties))

def on_subscribe(client, userdata, mid, rcs, properties):
    say(ev="suback", mid=mid, rcs=[r.value for r in rcs])

def on_message(client, userdata, m):
    say(ev="message", topic=m.topic, payload=m.payload.decode(errors="replace"), hex=m.payload.hex(), qos=m.qos,
        retain=bool(m.retain), props=canonical(m.properties if v5 else None))

def on_publish(client, userdata, mid, rc, properties):
    say(ev="puback", mid=mid, rc=rc.value)

def on_disconnect(client, userdata, flags, rc, properties):
    say(ev="disconnect", rc=rc.value)
    client.disconnect()  # no automatic reconnection

c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.on_publish = on_publish
c.on_disconnect = on_disconnect
if v5:
    props = Properties(PacketTypes.CONNECT)
    if cfg.get("expiry") is not None:
        props.SessionExpiryInterval = cfg["expiry"]
    c.connect("127.0.0.1", cfg["port"], keepalive=60, clean_start=bool(cfg.get("clean", True)), properties=props)
else:
    c.connect("127.0.0.1", cfg["port"], keepalive=60)
c.loop_start()

while True:
    line = sys.stdin.readline()
    if not line:
        break
    cmd = json.loads(line)
    op = cmd["op"]
    if op == "sub":
        if v5:
            options = SubscribeOptions(qos=cmd.get("qos", 1), noLocal=cmd.get("nl", False),
                                       retainAsPublished=cmd.get("rap", False), retainHandling=cmd.get("rh", 0))
            sub_props = None
            if cmd.get("subid") is not None:
                sub_props = Properties(PacketTypes.SUBSCRIBE)
                sub_props.SubscriptionIdentifier = cmd["subid"]
            _, mid = c.subscribe(cmd["filter"], options=options, properties=sub_props)
        else:
            _, mid = c.subscribe(cmd["filter"], qos=cmd.get("qos", 1))
        say(ev="sent", op="sub", mid=mid, props="{}")
    elif op == "pub":
        properties = build(PacketTypes.PUBLISH, cmd.get("props"))
        info = c.publish(cmd["topic"], payload_of(cmd), qos=cmd.get("qos", 1), retain=cmd.get("retain", False),
                         properties=properties)
        say(ev="sent", op="pub", mid=info.mid, props=canonical(properties))
    elif op == "disconnect":
        if v5:
            c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=cmd.get("rc", 0)))
        else:
            c.disconnect()
        say(ev="sent", op="disconnect", mid=0, props="{}")
c.loop_stop()
"""#

/// One line of the feature script's output.
struct FeatureEvent: CustomStringConvertible {
    let fields: [String: Any]
    let line: String

    var ev: String { fields["ev"] as? String ?? "" }
    var topic: String { fields["topic"] as? String ?? "" }
    var payload: String { fields["payload"] as? String ?? "" }
    var hex: String { fields["hex"] as? String ?? "" }
    var retain: Bool { fields["retain"] as? Bool ?? false }
    var qos: Int { fields["qos"] as? Int ?? -1 }
    var rc: Int { fields["rc"] as? Int ?? -1 }
    var mid: Int { fields["mid"] as? Int ?? -1 }
    var present: Bool { fields["present"] as? Bool ?? false }
    var rcs: [Int] { fields["rcs"] as? [Int] ?? [] }
    /// The properties as canonical JSON text (sorted keys), exactly as paho decoded them.
    var propsText: String { fields["props"] as? String ?? "{}" }
    var props: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(propsText.utf8))) as? [String: Any] ?? [:]
    }
    var description: String { line }
}

/// A running feature script: one paho client, one connection. Like `Background`, with its
/// standard input a pipe for the commands (Background starts its process before one could be set).
final class FeatureClient: @unchecked Sendable {
    let name: String
    private let process = Process()
    private let input = Pipe()
    private let outPath: String
    private let errPath: String

    /// Starts the client and waits for its CONNACK (which must be a success).
    init(
        _ custody: RunningCustody, _ name: String, user: String = "dev", password: String? = nil, v3: Bool = false,
        clean: Bool = true, expiry: Int? = nil, will: [String: Any]? = nil
    ) throws {
        self.name = name
        var config: [String: Any] = ["port": custody.port, "id": name, "user": user, "v3": v3, "clean": clean]
        if let password { config["password"] = password }
        if let expiry { config["expiry"] = expiry }
        if let will { config["will"] = will }
        let json = String(decoding: try JSONSerialization.data(withJSONObject: config), as: UTF8.self)
        let base = scratchDirectory("feature-\(name)")
        outPath = base + ".out"
        errPath = base + ".err"
        try featureScript.write(toFile: base + ".py", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: try pahoPython())
        process.arguments = ["-u", base + ".py", json]
        process.standardInput = input
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        try process.run()
        defer { try? FileManager.default.removeItem(atPath: base + ".py") }
        let connack = try waitFor("CONNACK") { $0.ev == "connack" }
        guard connack.rc == 0 else { throw E2EError.unexpected("\(name): \(connack)") }
    }

    deinit { kill() }

    var events: [FeatureEvent] {
        stdout.split(separator: "\n").compactMap { line in
            guard let data = String(line).data(using: .utf8),
                let fields = try? JSONSerialization.jsonObject(with: data) as? [String: Any]
            else { return nil }
            return FeatureEvent(fields: fields, line: String(line))
        }
    }

    var messages: [FeatureEvent] { events.filter { $0.ev == "message" } }

    var connack: FeatureEvent? { events.first { $0.ev == "connack" } }

    /// Waits for an event that satisfies `match`.
    @discardableResult
    func waitFor(_ what: String, timeout: Double = 10, _ match: (FeatureEvent) -> Bool) throws -> FeatureEvent {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let event = events.first(where: match) { return event }
            usleep(10_000)
        }
        throw E2EError.timeout("\(name): \(what) in:\n\(output)")
    }

    /// Waits for the message on `topic` with `payload`.
    @discardableResult
    func waitForMessage(_ topic: String, _ payload: String, timeout: Double = 10) throws -> FeatureEvent {
        try waitFor("MESSAGE \(topic) \(payload)", timeout: timeout) { $0.ev == "message" && $0.topic == topic && $0.payload == payload }
    }

    private func command(_ command: [String: Any]) throws -> FeatureEvent {
        let before = events.filter { $0.ev == "sent" }.count
        var line = try JSONSerialization.data(withJSONObject: command)
        line.append(UInt8(ascii: "\n"))
        try input.fileHandleForWriting.write(contentsOf: line)
        try waitFor("\(command)") { _ in events.filter { $0.ev == "sent" }.count > before }
        return events.filter { $0.ev == "sent" }[before]
    }

    /// SUBSCRIBE; returns the SUBACK's reason codes.
    @discardableResult
    func subscribe(
        _ filter: String, qos: Int = 1, retainHandling: Int = 0, retainAsPublished: Bool = false, noLocal: Bool = false,
        identifier: Int? = nil
    ) throws -> [Int] {
        var spec: [String: Any] = [
            "op": "sub", "filter": filter, "qos": qos, "rh": retainHandling, "rap": retainAsPublished, "nl": noLocal,
        ]
        if let identifier { spec["subid"] = identifier }
        let mid = try command(spec).mid
        return try waitFor("SUBACK \(mid)") { $0.ev == "suback" && $0.mid == mid }.rcs
    }

    /// PUBLISH; for QoS 1, waits for the PUBACK. Returns the "sent" event (its `props` is what
    /// paho encoded) and the PUBACK's reason code (nil for QoS 0).
    @discardableResult
    func publish(
        _ topic: String, _ payload: String? = nil, hex: String? = nil, qos: Int = 1, retain: Bool = false,
        properties: [String: Any]? = nil, waitForAck: Bool = true
    ) throws -> (sent: FeatureEvent, ack: Int?) {
        var spec: [String: Any] = ["op": "pub", "topic": topic, "qos": qos, "retain": retain]
        if let hex { spec["hex"] = hex } else { spec["payload"] = payload ?? "" }
        if let properties { spec["props"] = properties }
        let sent = try command(spec)
        guard qos > 0, waitForAck else { return (sent, nil) }
        let ack = try waitFor("PUBACK \(sent.mid)") { $0.ev == "puback" && $0.mid == sent.mid }
        return (sent, ack.rc)
    }

    /// DISCONNECT with `reasonCode` (v5); the client then ends.
    func disconnect(reasonCode: Int = 0) throws {
        _ = try command(["op": "disconnect", "rc": reasonCode])
        try input.fileHandleForWriting.close()  // the script ends
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning { throw E2EError.timeout("\(name) to end after DISCONNECT:\n\(output)") }
    }

    /// SIGKILL: the connection ends without a DISCONNECT, as when a device loses power.
    /// (Foundation's Process starts children with SIGTERM blocked.)
    func kill() {
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Ends the client and removes its files.
    func cleanUp() {
        kill()
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
    }

    var isRunning: Bool { process.isRunning }
    var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var output: String { stdout + ((try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "") }
}

/// Runs `body` against its own `custody`; the clients it makes are ended and removed after.
private func withCustody(
    _ label: String, _ arguments: [String] = [], directory: String? = nil,
    _ body: (RunningCustody, inout [FeatureClient]) throws -> Void
) throws {
    try MQTTFrontTests.withCustody(label, arguments, directory: directory) { custody in
        var clients: [FeatureClient] = []
        defer { for client in clients { client.cleanUp() } }
        do {
            try body(custody, &clients)
        } catch {
            Issue.record("clients:\n\(clients.map { "\($0.name):\n\($0.output)" }.joined(separator: "\n"))")
            throw error
        }
    }
}

extension RunningCustody {
    /// Waits until the ledger has recorded `count` ends (disconnections) of session `name`.
    fileprivate func waitForEnd(of name: String, count: Int = 1) throws {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let ends = try events().filter {
                guard $0.sessionName.value == name, case .disconnected = $0.kind else { return false }
                return true
            }
            if ends.count >= count { return }
            usleep(20_000)
        }
        throw E2EError.timeout("\(count) disconnections of \(name) in the ledger")
    }
}

/// Every message `client` received before `marker` (on `markerTopic`), once it came.
private func messagesBefore(_ client: FeatureClient, marker: String, on markerTopic: String) throws -> [FeatureEvent] {
    try client.waitForMessage(markerTopic, marker)
    let messages = client.messages
    let index = messages.firstIndex { $0.topic == markerTopic && $0.payload == marker }!
    return Array(messages[..<index])
}

@Suite("MQTT features end to end", .serialized)
struct FeatureEndToEndTests {
    // MARK: Retained messages

    /// Retain Handling 0 sends the retained message on every SUBSCRIBE, 1 only when the
    /// subscription is new (not on a re-subscribe), 2 never. Absence is shown by a later live
    /// message: the retained ones come right after the SUBACK, before anything routed later.
    @Test func retainHandlingZeroOneTwo() async throws {
        try await offPool {
            try withCustody("retain-handling") { custody, clients in
                let publisher = try FeatureClient(custody, "rh-pub")
                clients.append(publisher)
                #expect(try publisher.publish("rh/a", "kept", retain: true).ack == 0x10)  // nobody subscribed yet
                var round = 0
                /// Subscribes `client` to rh/+ and returns the payloads of what came before the next marker.
                func subscribeAndCollect(_ client: FeatureClient, retainHandling: Int) throws -> [String] {
                    round += 1
                    let seen = client.messages.count
                    #expect(try client.subscribe("rh/+", retainHandling: retainHandling) == [1])
                    try publisher.publish("rh/marker", "m\(round)")
                    return try messagesBefore(client, marker: "m\(round)", on: "rh/marker").dropFirst(seen)
                        .filter { $0.topic != "rh/marker" }.map { "\($0.topic) \($0.payload) retain=\($0.retain)" }
                }
                let zero = try FeatureClient(custody, "rh-0")
                let one = try FeatureClient(custody, "rh-1")
                let two = try FeatureClient(custody, "rh-2")
                clients += [zero, one, two]
                #expect(try subscribeAndCollect(zero, retainHandling: 0) == ["rh/a kept retain=true"])
                #expect(try subscribeAndCollect(zero, retainHandling: 0) == ["rh/a kept retain=true"])
                #expect(try subscribeAndCollect(one, retainHandling: 1) == ["rh/a kept retain=true"])
                #expect(try subscribeAndCollect(one, retainHandling: 1) == [])
                #expect(try subscribeAndCollect(two, retainHandling: 2) == [])
                #expect(try subscribeAndCollect(two, retainHandling: 2) == [])
                // A live retained PUBLISH reaches every subscriber, whatever its Retain Handling
                // (retain flag cleared: Retain As Published is off).
                try publisher.publish("rh/a", "live", retain: true)
                for client in [zero, one, two] {
                    #expect(try client.waitForMessage("rh/a", "live").retain == false)
                }
            }
        }
    }

    /// A retained PUBLISH with an empty payload deletes the topic's retained message: a later
    /// subscriber gets nothing for it; another topic's retained message is untouched.
    @Test func emptyPayloadClearsTheRetainedMessage() async throws {
        try await offPool {
            try withCustody("retain-clear") { custody, clients in
                let publisher = try FeatureClient(custody, "clear-pub")
                clients.append(publisher)
                try publisher.publish("clear/a", "first", retain: true)
                try publisher.publish("clear/b", "stays", retain: true)
                let before = try FeatureClient(custody, "clear-before")
                clients.append(before)
                try before.subscribe("clear/+")
                try before.waitForMessage("clear/a", "first")
                try publisher.publish("clear/a", "", retain: true)
                // The clearing PUBLISH itself is delivered to current subscribers, empty.
                #expect(try before.waitForMessage("clear/a", "").retain == false)
                let after = try FeatureClient(custody, "clear-after")
                clients.append(after)
                try after.subscribe("clear/+")
                try publisher.publish("clear/marker", "m")
                let got = try messagesBefore(after, marker: "m", on: "clear/marker").map { "\($0.topic) \($0.payload)" }
                #expect(got == ["clear/b stays"])
            }
        }
    }

    /// Retain As Published: a subscription with it gets a live retained message with RETAIN 1,
    /// one without it gets RETAIN 0; a non-retained message is RETAIN 0 for both.
    @Test func retainAsPublished() async throws {
        try await offPool {
            try withCustody("retain-as-published") { custody, clients in
                let kept = try FeatureClient(custody, "rap-1")
                let cleared = try FeatureClient(custody, "rap-0")
                let publisher = try FeatureClient(custody, "rap-pub")
                clients += [kept, cleared, publisher]
                try kept.subscribe("rap/#", retainAsPublished: true)
                try cleared.subscribe("rap/#", retainAsPublished: false)
                try publisher.publish("rap/x", "retained", retain: true)
                try publisher.publish("rap/x", "plain", retain: false)
                #expect(try kept.waitForMessage("rap/x", "retained").retain == true)
                #expect(try cleared.waitForMessage("rap/x", "retained").retain == false)
                #expect(try kept.waitForMessage("rap/x", "plain").retain == false)
                #expect(try cleared.waitForMessage("rap/x", "plain").retain == false)
            }
        }
    }

    /// Retained messages are in LMDB: after custody stops and starts again on the same data
    /// directory, a new subscriber gets them (payload, QoS and properties as published), and a
    /// cleared one stays cleared.
    @Test func retainedMessagesSurviveARestart() async throws {
        try await offPool {
            let first = try RunningCustody("retain-restart")
            let directory = first.directory
            let properties: [String: Any] = ["ContentType": "text/plain", "UserProperty": [["k", "v"]]]
            var sent = ""
            do {
                let publisher = try FeatureClient(first, "restart-pub")
                defer { publisher.cleanUp() }
                sent = try publisher.publish("keep/a", "durable", retain: true, properties: properties).sent.propsText
                try publisher.publish("keep/b", "gone", retain: true)
                try publisher.publish("keep/b", "", retain: true)
                try publisher.publish("keep/c", "at-most-once", qos: 0, retain: true)
                try publisher.disconnect()
            } catch {
                first.cleanUp()
                throw error
            }
            first.stop()
            try withCustody("retain-restart-again", directory: directory) { custody, clients in
                let subscriber = try FeatureClient(custody, "restart-sub")
                clients.append(subscriber)
                try subscriber.subscribe("keep/#", qos: 1)
                try subscriber.waitForMessage("keep/c", "at-most-once")
                let got = try #require(subscriber.messages.first { $0.topic == "keep/a" })
                #expect(got.payload == "durable" && got.retain && got.qos == 1)
                #expect(got.propsText == sent)
                #expect(subscriber.messages.first { $0.topic == "keep/c" }?.qos == 0)
                #expect(!subscriber.messages.contains { $0.topic == "keep/b" })
            }
            for path in [first.stdoutPath, first.stderrPath] { try? FileManager.default.removeItem(atPath: path) }
        }
    }

    /// mosquitto_pub sends its QoS 0 PUBLISH and its DISCONNECT back to back: the PUBLISH is
    /// handled (here: retained) before the connection ends, every time. (It used to be lost
    /// now and then: the DISCONNECT ended the connection while the broker still had it.)
    @Test func publishRightBeforeDisconnectIsNotLost() async throws {
        try await offPool {
            try withCustody("publish-then-disconnect") { custody, clients in
                let count = 30
                for i in 0..<count {
                    let (status, _, error) = try run("/usr/bin/mosquitto_pub", [
                        "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", i % 2 == 0 ? "mqttv5" : "mqttv311", "-i", "quick-\(i)",
                        "-t", "quick/\(i)", "-m", "v\(i)", "-q", "0", "-r",
                    ])
                    #expect(status == 0, "\(error)")
                }
                let subscriber = try FeatureClient(custody, "quick-sub")
                clients.append(subscriber)
                try subscriber.subscribe("quick/#")
                let marker = try FeatureClient(custody, "quick-marker")
                clients.append(marker)
                try marker.publish("quick/marker", "m")
                let got = try messagesBefore(subscriber, marker: "m", on: "quick/marker")
                let missing = Set((0..<count).map { "quick/\($0)" }).subtracting(got.map(\.topic))
                #expect(missing.isEmpty && got.count == count, "lost: \(missing.sorted())")
            }
        }
    }

    /// The same when the connection is lost right after the PUBLISH (socket closed, no
    /// DISCONNECT): what the client sent before is handled, then its will goes.
    @Test func publishRightBeforeALostConnectionIsNotLost() async throws {
        try await offPool {
            // 30 connections of one client, each dropped at once: on a loaded machine they come
            // faster than their releases, and R3's 10 sessions per client is not what this is about.
            try withCustody("publish-then-lost", ["--max-sessions-per-client", "100"]) { custody, clients in
                let watcher = try FeatureClient(custody, "lost-watch")
                clients.append(watcher)
                try watcher.subscribe("lost/#")
                let count = 30
                for i in 0..<count {
                    let client = try RawClient(port: custody.port)
                    let will = MQTTWill(topic: "lost/will/\(i)", payload: ByteBuffer(string: "w\(i)"), qos: .atMostOnce)
                    #expect(try client.connect("lost-\(i)", user: "dev", will: will).reasonCode == .success)
                    try client.send(.publish(MQTTPublish(
                        topicName: "lost/\(i)", payload: ByteBuffer(string: "v\(i)"), qos: .atMostOnce, retain: true)))
                    client.drop()
                }
                for i in 0..<count { try watcher.waitForMessage("lost/will/\(i)", "w\(i)") }
                let late = try FeatureClient(custody, "lost-late")
                clients.append(late)
                try late.subscribe("lost/+")
                try late.publish("lost/marker", "m")
                let got = try messagesBefore(late, marker: "m", on: "lost/marker")
                let missing = Set((0..<count).map { "lost/\($0)" }).subtracting(got.map(\.topic))
                #expect(missing.isEmpty && got.count == count, "lost: \(missing.sorted())")
                // Each client's PUBLISH went before its will.
                let live = watcher.messages.map(\.topic)
                for i in 0..<count {
                    let publish = live.firstIndex(of: "lost/\(i)") ?? Int.max
                    let will = live.firstIndex(of: "lost/will/\(i)") ?? -1
                    #expect(publish < will, "lost/\(i) and its will in \(live)")
                }
            }
        }
    }

    /// A retained message whose Message Expiry Interval has passed is not delivered to a later
    /// subscriber; one still valid goes with its remaining interval.
    @Test func expiredRetainedMessageIsNotDelivered() async throws {
        try await offPool {
            try withCustody("retain-expiry") { custody, clients in
                let publisher = try FeatureClient(custody, "exp-pub")
                clients.append(publisher)
                try publisher.publish("exp/short", "1s", retain: true, properties: ["MessageExpiryInterval": 1])
                try publisher.publish("exp/long", "100s", retain: true, properties: ["MessageExpiryInterval": 100])
                usleep(1_200_000)  // the short one's interval passes
                let late = try FeatureClient(custody, "exp-late")
                clients.append(late)
                try late.subscribe("exp/#")
                try publisher.publish("exp/marker", "m")
                let got = try messagesBefore(late, marker: "m", on: "exp/marker")
                #expect(got.map(\.topic) == ["exp/long"])
                let remaining = try #require(got.first?.props["MessageExpiryInterval"] as? Int)
                #expect((90...99).contains(remaining), "\(got)")
            }
        }
    }

    // MARK: Wills

    /// A client killed (no DISCONNECT) has its will published, with the will's properties; a
    /// DISCONNECT 0x00 discards it; a DISCONNECT 0x04 (Disconnect with Will Message) sends it.
    @Test func willOnUncleanEndAndOnDisconnectWithWill() async throws {
        try await offPool {
            try withCustody("wills") { custody, clients in
                let watcher = try FeatureClient(custody, "will-watch")
                clients.append(watcher)
                try watcher.subscribe("wills/#")
                func will(_ name: String) -> [String: Any] {
                    ["topic": "wills/\(name)", "payload": "\(name) gone", "qos": 1,
                     "props": ["ContentType": "text/plain", "UserProperty": [["who", name]]]]
                }
                let killed = try FeatureClient(custody, "killed", will: will("killed"))
                let polite = try FeatureClient(custody, "polite", will: will("polite"))
                let withWill = try FeatureClient(custody, "with-will", will: will("with-will"))
                clients += [killed, polite, withWill]

                killed.kill()
                let lost = try watcher.waitForMessage("wills/killed", "killed gone")
                #expect(lost.props["ContentType"] as? String == "text/plain")
                #expect((lost.props["UserProperty"] as? [[String]]) == [["who", "killed"]])
                try custody.waitForEnd(of: "killed")
                #expect(try custody.events().last { $0.sessionName.value == "killed" }?.kind == .disconnected(.connectionLost))

                try polite.disconnect(reasonCode: 0x00)
                try custody.waitForEnd(of: "polite")  // the broker detached it before the ledger heard
                try withWill.disconnect(reasonCode: 0x04)
                try watcher.waitForMessage("wills/with-will", "with-will gone")
                let publisher = try FeatureClient(custody, "will-marker")
                clients.append(publisher)
                try publisher.publish("wills/marker", "m")
                let got = try messagesBefore(watcher, marker: "m", on: "wills/marker").map(\.topic)
                #expect(got == ["wills/killed", "wills/with-will"])
            }
        }
    }

    /// The other unclean ends publish the will too: a keep-alive timeout (0x8D) and a protocol
    /// error (0x82). Raw clients: paho neither falls silent nor breaks the protocol on purpose.
    @Test func willOnKeepAliveTimeoutAndProtocolError() async throws {
        try await offPool {
            try withCustody("will-unclean") { custody, clients in
                let watcher = try FeatureClient(custody, "unclean-watch")
                clients.append(watcher)
                try watcher.subscribe("gone/#")
                let silent = try RawClient(port: custody.port)
                let timeoutWill = MQTTWill(topic: "gone/silent", payload: ByteBuffer(string: "timeout"), qos: .atLeastOnce)
                #expect(try silent.connect("silent", user: "dev", keepAlive: 1, will: timeoutWill).reasonCode == .success)
                let rude = try RawClient(port: custody.port)
                let errorWill = MQTTWill(topic: "gone/rude", payload: ByteBuffer(string: "protocol error"), qos: .atLeastOnce)
                #expect(try rude.connect("rude", user: "dev", will: errorWill).reasonCode == .success)
                try rude.sendRaw([0xD0, 0x00])  // PINGRESP, which only a server sends
                #expect(try rude.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
                try watcher.waitForMessage("gone/rude", "protocol error")
                #expect(try silent.receiveUntilClosed(timeout: 10) == [.disconnect(MQTTDisconnect(reasonCode: .keepAliveTimeout))])
                try watcher.waitForMessage("gone/silent", "timeout")
            }
        }
    }

    /// A server shutdown is an unclean end for the connections it closes (0x8B): their wills
    /// are published, and one bound for a persistent session is there for it after the restart.
    @Test func willOnServerShutdownIsQueuedForAPersistentSession() async throws {
        try await offPool {
            let first = try RunningCustody("will-shutdown")
            let directory = first.directory
            defer { for path in [first.stdoutPath, first.stderrPath] { try? FileManager.default.removeItem(atPath: path) } }
            do {
                let watcher = try FeatureClient(first, "down-watch", clean: true, expiry: 300)
                defer { watcher.cleanUp() }
                try watcher.subscribe("down/#")
                let device = try FeatureClient(
                    first, "down-device", will: ["topic": "down/device", "payload": "server went away", "qos": 1])
                defer { device.cleanUp() }
                first.stop()
                #expect(try device.waitFor("DISCONNECT") { $0.ev == "disconnect" }.rc == 0x8B)
                #expect(try watcher.waitFor("DISCONNECT") { $0.ev == "disconnect" }.rc == 0x8B)
            } catch {
                first.cleanUp()
                throw error
            }
            try withCustody("will-shutdown-again", directory: directory) { custody, clients in
                let watcher = try FeatureClient(custody, "down-watch", clean: false, expiry: 300)
                clients.append(watcher)
                #expect(watcher.connack?.present == true)
                try watcher.waitForMessage("down/device", "server went away")
            }
        }
    }

    /// Will Delay Interval: the will goes after the delay, or after the session expiry when
    /// that is shorter (min(delay, expiry)); never before.
    @Test func willDelayIsTheShorterOfDelayAndSessionExpiry() async throws {
        try await offPool {
            try withCustody("will-delay") { custody, clients in
                let watcher = try FeatureClient(custody, "delay-watch")
                clients.append(watcher)
                try watcher.subscribe("late/#")
                let byDelay = try FeatureClient(
                    custody, "by-delay", clean: true, expiry: 60,
                    will: ["topic": "late/by-delay", "payload": "2s", "props": ["WillDelayInterval": 2]])
                let byExpiry = try FeatureClient(
                    custody, "by-expiry", clean: true, expiry: 2,
                    will: ["topic": "late/by-expiry", "payload": "2s", "props": ["WillDelayInterval": 60]])
                clients += [byDelay, byExpiry]
                let start = Date()
                byDelay.kill()
                byExpiry.kill()
                try custody.waitForEnd(of: "by-delay")
                try custody.waitForEnd(of: "by-expiry")
                #expect(watcher.messages.isEmpty, "\(watcher.messages)")
                try watcher.waitForMessage("late/by-delay", "2s")
                try watcher.waitForMessage("late/by-expiry", "2s")
                #expect(Date().timeIntervalSince(start) >= 1.9)
                // The Will Delay Interval is not forwarded.
                #expect(watcher.messages.allSatisfy { $0.props["WillDelayInterval"] == nil })
            }
        }
    }

    /// A session resumed before its will's delay ends cancels the will.
    @Test func willIsNotSentWhenTheSessionResumesInTime() async throws {
        try await offPool {
            try withCustody("will-resumed", fastReconnects) { custody, clients in
                let watcher = try FeatureClient(custody, "resume-watch")
                clients.append(watcher)
                try watcher.subscribe("resume/#")
                let device = try FeatureClient(
                    custody, "resumer", clean: true, expiry: 60,
                    will: ["topic": "resume/will", "payload": "should not go", "props": ["WillDelayInterval": 2]])
                clients.append(device)
                device.kill()
                try custody.waitForEnd(of: "resumer")
                let start = Date()  // the will's delay began before this
                let back = try FeatureClient(custody, "resumer", clean: false, expiry: 60)
                clients.append(back)
                #expect(back.connack?.present == true)
                // Past the delay (and a margin), then a marker: no will before it.
                let left = 2.5 - Date().timeIntervalSince(start)
                if left > 0 { usleep(UInt32(left * 1_000_000)) }
                try back.publish("resume/marker", "m")
                #expect(try messagesBefore(watcher, marker: "m", on: "resume/marker").isEmpty)
            }
        }
    }

    // MARK: Shared subscriptions

    /// `$share/g/jobs/#` with a v5 and a v3.1.1 member: each of N messages goes to exactly one
    /// member, both get some; a plain subscriber gets all N. When one member leaves (killed),
    /// the other gets everything that follows.
    @Test func sharedSubscriptionSpreadsAndSurvivesAMemberLeaving() async throws {
        try await offPool {
            try withCustody("shared") { custody, clients in
                let v5Member = try FeatureClient(custody, "member-5")
                let v3Member = try FeatureClient(custody, "member-3", v3: true)
                let plain = try FeatureClient(custody, "plain")
                let publisher = try FeatureClient(custody, "share-pub")
                clients += [v5Member, v3Member, plain, publisher]
                #expect(try v5Member.subscribe("$share/g/jobs/#") == [1])
                #expect(try v3Member.subscribe("$share/g/jobs/#") == [1])
                try plain.subscribe("jobs/#")
                let n = 20
                for i in 0..<n { try publisher.publish("jobs/x", "n\(i)", waitForAck: false) }
                try plain.waitForMessage("jobs/x", "n\(n - 1)")
                let deadline = Date().addingTimeInterval(10)
                while v5Member.messages.count + v3Member.messages.count < n, Date() < deadline { usleep(10_000) }
                let first = v5Member.messages.map(\.payload)
                let second = v3Member.messages.map(\.payload)
                #expect(first.count + second.count == n, "\(first) \(second)")
                #expect(Set(first + second) == Set((0..<n).map { "n\($0)" }))
                #expect(!first.isEmpty && !second.isEmpty)
                #expect(plain.messages.map(\.payload) == (0..<n).map { "n\($0)" })

                v3Member.kill()
                try custody.waitForEnd(of: "member-3")
                for i in n..<(n + 5) { try publisher.publish("jobs/x", "n\(i)") }
                try v5Member.waitForMessage("jobs/x", "n\(n + 4)")
                let later = (n..<(n + 5)).map { "n\($0)" }
                let after = v5Member.messages.dropFirst(first.count).map(\.payload)
                #expect(after.filter { later.contains($0) } == later)
                // Besides those, at most copies of what the killed member had not acknowledged yet,
                // handed to the remaining member (QoS 1: at least once).
                #expect(Set(after).subtracting(later).isSubset(of: second), "\(after)")
            }
        }
    }

    // MARK: Message Expiry Interval

    /// Messages queued for an offline persistent session: one with a long interval is
    /// delivered with the interval decremented by the time it waited, one without goes as is,
    /// one whose interval passed while it waited is dropped.
    @Test func queuedMessagesExpire() async throws {
        try await offPool {
            try withCustody("queued-expiry") { custody, clients in
                let sleeper = try FeatureClient(custody, "sleeper", clean: true, expiry: 60)
                clients.append(sleeper)
                try sleeper.subscribe("q/#")
                try sleeper.disconnect()
                try custody.waitForEnd(of: "sleeper")
                let publisher = try FeatureClient(custody, "q-pub")
                clients.append(publisher)
                try publisher.publish("q/long", "60s", properties: ["MessageExpiryInterval": 60])
                try publisher.publish("q/short", "1s", properties: ["MessageExpiryInterval": 1])
                try publisher.publish("q/none", "forever")
                usleep(1_500_000)  // the short one expires; the long one has waited a full second
                let back = try FeatureClient(custody, "sleeper", clean: false, expiry: 60)
                clients.append(back)
                #expect(back.connack?.present == true)
                try publisher.publish("q/marker", "m")
                let got = try messagesBefore(back, marker: "m", on: "q/marker")
                #expect(got.map(\.topic) == ["q/long", "q/none"])
                let remaining = try #require(got.first?.props["MessageExpiryInterval"] as? Int)
                #expect((50...59).contains(remaining), "\(got)")
                #expect(got.last?.props["MessageExpiryInterval"] == nil)
            }
        }
    }

    // MARK: Subscription Identifiers, No Local, Payload Format Indicator, properties

    /// Each PUBLISH carries the identifiers of the subscriptions it matched (both, for two
    /// overlapping ones, in one PUBLISH); a subscription without one adds none.
    @Test func subscriptionIdentifiersComeWithThePublish() async throws {
        try await offPool {
            try withCustody("subscription-ids") { custody, clients in
                let subscriber = try FeatureClient(custody, "ids-sub")
                let publisher = try FeatureClient(custody, "ids-pub")
                clients += [subscriber, publisher]
                try subscriber.subscribe("ids/#", identifier: 5)
                try subscriber.subscribe("ids/+/x", identifier: 9)
                try subscriber.subscribe("other/#")
                try publisher.publish("ids/a/x", "both")
                try publisher.publish("ids/b", "one")
                try publisher.publish("other/c", "none")
                try subscriber.waitForMessage("other/c", "none")
                let byPayload = Dictionary(grouping: subscriber.messages, by: \.payload)
                #expect(byPayload["both"]?.count == 1, "\(subscriber.messages)")
                #expect((byPayload["both"]?.first?.props["SubscriptionIdentifier"] as? [Int])?.sorted() == [5, 9])
                #expect(byPayload["one"]?.first?.props["SubscriptionIdentifier"] as? [Int] == [5])
                #expect(byPayload["none"]?.first?.props["SubscriptionIdentifier"] == nil)
            }
        }
    }

    /// No Local: a client's own messages are not sent back on a No Local subscription; they
    /// are on an ordinary one, and others' messages come either way.
    @Test func noLocalSuppressesOwnMessages() async throws {
        try await offPool {
            try withCustody("no-local") { custody, clients in
                let quiet = try FeatureClient(custody, "quiet")
                let echo = try FeatureClient(custody, "echo")
                let marker = try FeatureClient(custody, "nl-marker")
                clients += [quiet, echo, marker]
                try quiet.subscribe("nl/#", noLocal: true)
                try echo.subscribe("nl/#", noLocal: false)
                try quiet.publish("nl/quiet", "from quiet")
                try echo.publish("nl/echo", "from echo")
                try marker.publish("nl/marker", "m")
                #expect(try messagesBefore(quiet, marker: "m", on: "nl/marker").map(\.payload) == ["from echo"])
                #expect(try messagesBefore(echo, marker: "m", on: "nl/marker").map(\.payload) == ["from quiet", "from echo"])
            }
        }
    }

    /// Payload Format Indicator 1 (UTF-8): a valid UTF-8 payload goes through with the
    /// indicator; an invalid one is refused: custody checks it when decoding the PUBLISH and
    /// closes the connection with DISCONNECT 0x99 (Payload format invalid, allowed by MQTT 5.0
    /// 3.3.2.3.2), and routes nothing. Without the indicator, any bytes go through unchanged.
    @Test func payloadFormatIndicatorIsChecked() async throws {
        try await offPool {
            try withCustody("payload-format") { custody, clients in
                let subscriber = try FeatureClient(custody, "pfi-sub")
                let publisher = try FeatureClient(custody, "pfi-pub")
                clients += [subscriber, publisher]
                try subscriber.subscribe("pfi/#")
                #expect(try publisher.publish("pfi/utf8", "h\u{e9}llo \u{2713}", properties: ["PayloadFormatIndicator": 1]).ack == 0)
                #expect(try publisher.publish("pfi/binary", hex: "fffe00c3").ack == 0)
                let good = try subscriber.waitForMessage("pfi/utf8", "h\u{e9}llo \u{2713}")
                #expect(good.props["PayloadFormatIndicator"] as? Int == 1)
                let binary = try subscriber.waitFor("binary") { $0.topic == "pfi/binary" }
                #expect(binary.hex == "fffe00c3" && binary.props["PayloadFormatIndicator"] == nil)

                try publisher.publish("pfi/bad", hex: "fffe", properties: ["PayloadFormatIndicator": 1], waitForAck: false)
                #expect(try publisher.waitFor("DISCONNECT") { $0.ev == "disconnect" }.rc == 0x99)
                try custody.waitForEnd(of: "pfi-pub")
                #expect(try custody.events().last { $0.sessionName.value == "pfi-pub" }?.kind == .disconnected(.clientError))
                let marker = try FeatureClient(custody, "pfi-marker")
                clients.append(marker)
                try marker.publish("pfi/marker", "m")
                #expect(try messagesBefore(subscriber, marker: "m", on: "pfi/marker").map(\.topic) == ["pfi/utf8", "pfi/binary"])
            }
        }
    }

    /// Content Type, Response Topic, Correlation Data (binary), User Properties (repeated
    /// keys, order, non-ASCII) and the Payload Format Indicator reach a subscriber exactly as
    /// published, both live and queued for an offline persistent session (through LMDB).
    @Test func propertiesArePassedThroughUnchanged() async throws {
        try await offPool {
            try withCustody("properties", fastReconnects) { custody, clients in
                let live = try FeatureClient(custody, "props-live")
                let offline = try FeatureClient(custody, "props-offline", clean: true, expiry: 60)
                clients += [live, offline]
                try live.subscribe("props/#")
                try offline.subscribe("props/#")
                try offline.disconnect()
                try custody.waitForEnd(of: "props-offline")
                let publisher = try FeatureClient(custody, "props-pub")
                clients.append(publisher)
                let properties: [String: Any] = [
                    "PayloadFormatIndicator": 1, "ContentType": "application/json; charset=utf-8",
                    "ResponseTopic": "props/reply/42", "CorrelationData": "00ff10802a",
                    "UserProperty": [["a", "1"], ["b", "2"], ["a", "3"], ["cl\u{e9}", "v\u{e4}rde \u{2713}"], ["", ""]],
                ]
                let sent = try publisher.publish("props/x", "{\"v\": 1}", properties: properties).sent.propsText
                #expect(sent.contains("00ff10802a") && sent.contains("ResponseTopic"), "\(sent)")
                let got = try live.waitForMessage("props/x", "{\"v\": 1}")
                #expect(got.propsText == sent)
                let back = try FeatureClient(custody, "props-offline", clean: false, expiry: 60)
                clients.append(back)
                let queued = try back.waitForMessage("props/x", "{\"v\": 1}")
                #expect(queued.propsText == sent)
            }
        }
    }
}
