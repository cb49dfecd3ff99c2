import Foundation
import MQTTCodec
import NIOCore
import Testing

// MQTT 5 limits and flow end to end, with paho-mqtt (a real client) against the real `custody`:
// topic aliases, Receive Maximum, Maximum Packet Size toward the client, Server Keep Alive,
// and what the CONNACK announces.

/// A paho-mqtt 2.x client for one scenario, reporting on standard output, one line per event:
///
///     CONNACK rc=<code> props=<json of the CONNACK properties> keepalive=<seconds in force>
///     SUBACK <codes>
///     MESSAGE <topic> <payload length> <payload prefix> qos=<q>
///     PUBACK <mid> rc=<code>          (QoS 1 acknowledgements of what this client published)
///     DISCONNECT rc=<code>
///     DONE                             (the scenario's publishing is over)
let flowScript = #"""
import argparse, json, signal, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--v3", action="store_true")
p.add_argument("--keepalive", type=int, default=60)
p.add_argument("--max-packet-size", type=int)
p.add_argument("--subscribe")
p.add_argument("--sub-id", type=int)
# receive-maximum: this client's Receive Maximum; with --hold-after N it acknowledges nothing
# until N messages came, waits a second, says INFLIGHT count=<messages so far>, then acks all.
p.add_argument("--receive-maximum", type=int)
p.add_argument("--hold-after", type=int)
p.add_argument("--transport", default="tcp")
p.add_argument("--ws-path", default="/mqtt")
# alias: publish "--topic" with alias 1, then twice with the alias alone (QoS 1)
# alias-invalid: publish with alias "--alias" (QoS 1)
# alias-unset: publish an empty topic with alias 5, never set
# flood-qos2: publish "--count" QoS 2 messages and withhold every PUBREL
# flood-qos1: publish "--count" QoS 1 messages "n0".."n<count-1>" and wait for their PUBACKs
# publish: publish "--message" to "--topic" at QoS "--qos"
p.add_argument("--scenario", default="none")
p.add_argument("--topic", default="t")
p.add_argument("--message", default="m")
p.add_argument("--qos", type=int, default=1)
p.add_argument("--alias", type=int, default=1)
p.add_argument("--count", type=int, default=1)
a = p.parse_args()

def say(line):
    print(line, flush=True)

v5 = not a.v3
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                transport=a.transport, manual_ack=a.hold_after is not None)
received = []
held = threading.Event()

def release_held():
    time.sleep(1)
    say("INFLIGHT count=%d" % len(received))
    held.set()
    for m in list(received):
        c.ack(m.mid, m.qos)
if a.transport == "websockets":
    c.ws_set_options(path=a.ws_path)
c.username_pw_set("dev")
# paho does not count against the server's Receive Maximum itself; the flood needs no limit here.
c.max_inflight_messages_set(0)
if a.scenario == "flood-qos2":
    c._send_pubrel = lambda mid: mqtt.MQTT_ERR_SUCCESS
done = threading.Event()
connected = threading.Event()

def on_connect(client, userdata, flags, rc, properties):
    props = properties.json() if properties is not None else {}
    say("CONNACK rc=%d props=%s keepalive=%d" % (rc.value, json.dumps(props, sort_keys=True), client._keepalive))
    if rc.value != 0:
        done.set()
        return
    if a.subscribe:
        sub_props = None
        if a.sub_id is not None:
            sub_props = Properties(PacketTypes.SUBSCRIBE)
            sub_props.SubscriptionIdentifier = a.sub_id
        client.subscribe(a.subscribe, qos=1, properties=sub_props)
    connected.set()

def on_subscribe(client, userdata, mid, rcs, properties):
    say("SUBACK " + " ".join(str(r.value) for r in rcs))

def on_message(client, userdata, m):
    say("MESSAGE %s %d %s qos=%d" % (m.topic, len(m.payload), m.payload[:16].decode(errors="replace"), m.qos))
    if a.sub_id is not None:
        say("SUBID %s" % getattr(m.properties, "SubscriptionIdentifier", None))
    if a.hold_after is not None:
        received.append(m)
        if held.is_set():
            client.ack(m.mid, m.qos)
        elif len(received) == a.hold_after:
            threading.Thread(target=release_held, daemon=True).start()

def on_publish(client, userdata, mid, rc, properties):
    say("PUBACK %d rc=%d" % (mid, rc.value))

def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value)
    done.set()

c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.on_publish = on_publish
c.on_disconnect = on_disconnect
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda *_: done.set())

if v5:
    props = Properties(PacketTypes.CONNECT)
    if a.max_packet_size is not None:
        props.MaximumPacketSize = a.max_packet_size
    if a.receive_maximum is not None:
        props.ReceiveMaximum = a.receive_maximum
    c.connect("127.0.0.1", a.port, keepalive=a.keepalive, clean_start=True, properties=props)
else:
    c.connect("127.0.0.1", a.port, keepalive=a.keepalive)
c.loop_start()

def publish(topic, payload, alias=None, qos=None):
    props = None
    if alias is not None:
        props = Properties(PacketTypes.PUBLISH)
        props.TopicAlias = alias
    return c.publish(topic, payload, qos=a.qos if qos is None else qos, properties=props)

if connected.wait(10):
    if a.scenario == "alias":
        publish(a.topic, "set", alias=1).wait_for_publish(10)
        publish("", "via-alias-1", alias=1).wait_for_publish(10)
        publish("", "via-alias-2", alias=1).wait_for_publish(10)
        say("DONE")
    elif a.scenario == "alias-invalid":
        publish(a.topic, "x", alias=a.alias)
    elif a.scenario == "alias-unset":
        publish("", "x", alias=5)
    elif a.scenario == "flood-qos2":
        for i in range(a.count):
            publish(a.topic, "n%d" % i, qos=2)
        say("DONE")
    elif a.scenario == "flood-qos1":
        infos = [publish(a.topic, "n%d" % i, qos=1) for i in range(a.count)]
        for info in infos:
            info.wait_for_publish(10)
        say("DONE")
    elif a.scenario == "publish":
        info = publish(a.topic, a.message)
        if a.qos > 0:
            info.wait_for_publish(10)
        say("DONE")
done.wait()
c.loop_stop()
"""#

/// Starts the flow script with these arguments.
func flowClient(_ arguments: [String]) throws -> Background {
    let script = scratchDirectory("flow") + ".py"
    try flowScript.write(toFile: script, atomically: true, encoding: .utf8)
    return try Background(try pahoPython(), ["-u", script] + arguments)
}


/// The CONNACK properties paho printed, as JSON.
private func connackProperties(_ output: String) throws -> [String: Any] {
    guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("CONNACK rc=0 ") }),
        let start = line.range(of: "props="), let end = line.range(of: " keepalive=")
    else { throw E2EError.unexpected("no CONNACK in \(output)") }
    let json = line[start.upperBound..<end.lowerBound]
    return try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] ?? [:]
}

@Suite("MQTT 5 flow and limits end to end", .serialized)
struct FlowControlEndToEndTests {
    /// What the CONNACK says, as paho reads it: Receive Maximum 100, Topic Alias Maximum 10,
    /// Maximum Packet Size 512 KiB; QoS 2, retain, wildcards, subscription identifiers and shared
    /// subscriptions all available, so absent (absence means available) — and each of them works.
    @Test func connAckAnnouncesWhatTheBrokerDoes() async throws {
        try await offPool {
            try withCustody("connack") { custody in
                let client = try flowClient([
                    "--port", "\(custody.port)", "--id", "props", "--subscribe", "$share/g/props/#", "--sub-id", "7",
                ])
                defer { client.stop() }
                try client.waitForOutput(containing: "SUBACK 1")
                let properties = try connackProperties(client.output)
                #expect(properties["ReceiveMaximum"] as? Int == 100)
                #expect(properties["TopicAliasMaximum"] as? Int == 10)
                #expect(properties["MaximumPacketSize"] as? Int == 512 << 10)
                for absent in ["MaximumQoS", "RetainAvailable", "WildcardSubscriptionAvailable",
                    "SubscriptionIdentifierAvailable", "SharedSubscriptionAvailable", "ServerKeepAlive"]
                {
                    #expect(properties[absent] == nil, "\(absent) in \(properties)")
                }
                // Truthful: a shared wildcard subscription with a Subscription Identifier was granted (above),
                // a retained QoS 2 PUBLISH is taken, and the message comes with the identifier.
                let (status, _, error) = try run("/usr/bin/mosquitto_pub", [
                    "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "p", "-u", "dev", "-t", "props/a",
                    "-m", "hello", "-q", "2", "-r",
                ])
                #expect(status == 0, "\(error)")
                try client.waitForOutput(containing: "MESSAGE props/a 5 hello qos=1")
                try client.waitForOutput(containing: "SUBID [7]")
            }
        }
    }

    /// A topic alias set by one PUBLISH and then used alone: accepted (PUBACK 0) and delivered
    /// to the subscriber with the full topic.
    @Test func topicAliasPublishIsDeliveredWithTheFullTopic() async throws {
        try await offPool {
            try withCustody("alias") { custody in
                let subscriber = try paho(["--port", "\(custody.port)", "--id", "alias-sub", "--user", "dev", "--subscribe", "plant/#"])
                defer { subscriber.stop() }
                try subscriber.waitForOutput(containing: "SUBACK 1")
                let publisher = try flowClient([
                    "--port", "\(custody.port)", "--id", "alias-pub", "--scenario", "alias", "--topic", "plant/7/temp",
                ])
                defer { publisher.stop() }
                try publisher.waitForOutput(containing: "DONE")
                for mid in 1...3 { #expect(publisher.output.contains("PUBACK \(mid) rc=0\n"), "\(publisher.output)") }
                #expect(!publisher.output.contains("DISCONNECT"), "\(publisher.output)")
                try subscriber.waitForOutput(containing: "MESSAGE plant/7/temp via-alias-2 qos=1")
                let messages = subscriber.output.split(separator: "\n").filter { $0.hasPrefix("MESSAGE") }
                #expect(messages == [
                    "MESSAGE plant/7/temp set qos=1", "MESSAGE plant/7/temp via-alias-1 qos=1",
                    "MESSAGE plant/7/temp via-alias-2 qos=1",
                ])
            }
        }
    }

    /// An alias above the announced maximum closes with 0x94; one never set, with an empty
    /// topic, with 0x82; both logged and recorded as ClientError.
    @Test func badTopicAliasesAreRefused() async throws {
        try await offPool {
            try withCustody("bad-alias") { custody in
                let above = try flowClient(["--port", "\(custody.port)", "--id", "above", "--scenario", "alias-invalid", "--alias", "11"])
                defer { above.stop() }
                try above.waitForOutput(containing: "DISCONNECT rc=148")
                try custody.waitForLog("above", "Topic Alias 11, the maximum is 10")
                let unset = try flowClient(["--port", "\(custody.port)", "--id", "unset", "--scenario", "alias-unset"])
                defer { unset.stop() }
                try unset.waitForOutput(containing: "DISCONNECT rc=130")
                try custody.waitForLog("unset", "Topic Alias 5 used before it was set")
                for name in ["above", "unset"] {
                    let ended = try custody.waitForEvent { $0.sessionName.value == name && $0.kind != .connected }
                    #expect(ended.kind == .disconnected(.clientError))
                }
            }
        }
    }

    /// Alias 0 (which paho would not send) from the raw client: 0x94 as well.
    @Test func topicAliasZeroIsRefused() async throws {
        try await offPool {
            try withCustody("alias-zero") { custody in
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("zero", user: "dev").reasonCode == .success)
                try client.sendRaw([0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00])
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])
            }
        }
    }

    /// A client that keeps 101 QoS 2 PUBLISHes unreleased (no PUBREL) exceeds the Receive
    /// Maximum of 100: DISCONNECT 0x93. Its first 100 were taken.
    @Test func exceedingTheReceiveMaximumIs0x93() async throws {
        try await offPool {
            try withCustody("receive-max") { custody in
                let client = try flowClient([
                    "--port", "\(custody.port)", "--id", "flood", "--scenario", "flood-qos2", "--count", "101", "--topic", "flood/a",
                ])
                defer { client.stop() }
                try client.waitForOutput(containing: "DISCONNECT rc=147", timeout: 20)
                try custody.waitForLog("flood", "more than 100 QoS 1/2 PUBLISHes unacknowledged")
                // 100 withheld, within the limit, is fine: all are routed (a subscriber gets the
                // last), and the client stays connected.
                let subscriber = try paho(["--port", "\(custody.port)", "--id", "watch", "--user", "dev", "--subscribe", "flood/b"])
                defer { subscriber.stop() }
                try subscriber.waitForOutput(containing: "SUBACK 1")
                let polite = try flowClient([
                    "--port", "\(custody.port)", "--id", "polite", "--scenario", "flood-qos2", "--count", "100", "--topic", "flood/b",
                ])
                defer { polite.stop() }
                try subscriber.waitForOutput(containing: "MESSAGE flood/b n99 qos=1", timeout: 20)
                #expect(!polite.output.contains("DISCONNECT"), "\(polite.output)")
                let politeEnded = custody.stderr.split(separator: "\n").contains {
                    $0.contains("polite") && ($0.contains("closed") || $0.contains("disconnected"))
                }
                #expect(!politeEnded, "\(custody.stderr)")
            }
        }
    }

    /// A message larger than a subscriber's Maximum Packet Size is skipped for that subscriber
    /// (MQTT-3.1.2-25), which stays connected and gets the next one; another subscriber gets both.
    @Test func oversizedMessageIsSkippedForASmallMaximumPacketSize() async throws {
        try await offPool {
            try withCustody("max-packet") { custody in
                let small = try flowClient(["--port", "\(custody.port)", "--id", "small", "--max-packet-size", "200", "--subscribe", "big/#"])
                defer { small.stop() }
                let large = try flowClient(["--port", "\(custody.port)", "--id", "large", "--subscribe", "big/#"])
                defer { large.stop() }
                try small.waitForOutput(containing: "SUBACK 1")
                try large.waitForOutput(containing: "SUBACK 1")
                for (message, id) in [(String(repeating: "x", count: 1000), "pub-big"), ("after", "pub-small")] {
                    let publisher = try flowClient([
                        "--port", "\(custody.port)", "--id", id, "--scenario", "publish", "--topic", "big/one", "--message", message,
                    ])
                    defer { publisher.stop() }
                    try publisher.waitForOutput(containing: "DONE")
                }
                try large.waitForOutput(containing: "MESSAGE big/one 5 after qos=1")
                try small.waitForOutput(containing: "MESSAGE big/one 5 after qos=1")
                #expect(large.output.contains("MESSAGE big/one 1000 xxxxxxxxxxxxxxxx qos=1"), "\(large.output)")
                #expect(!small.output.contains("MESSAGE big/one 1000"), "\(small.output)")
                #expect(!small.output.contains("DISCONNECT"), "\(small.output)")
            }
        }
    }

    /// The client's own Receive Maximum (2) is honoured: with two QoS 1 messages unacknowledged
    /// it gets no third until it acknowledges; then the rest come, in order.
    @Test func clientsReceiveMaximumIsHonoured() async throws {
        try await offPool {
            try withCustody("client-receive-max") { custody in
                let slow = try flowClient([
                    "--port", "\(custody.port)", "--id", "slow", "--subscribe", "work/#", "--receive-maximum", "2", "--hold-after", "2",
                ])
                defer { slow.stop() }
                try slow.waitForOutput(containing: "SUBACK 1")
                let publisher = try flowClient([
                    "--port", "\(custody.port)", "--id", "boss", "--scenario", "flood-qos1", "--count", "5", "--topic", "work/item",
                ])
                defer { publisher.stop() }
                try publisher.waitForOutput(containing: "DONE")
                try slow.waitForOutput(containing: "INFLIGHT count=2")
                try slow.waitForOutput(containing: "MESSAGE work/item 2 n4 qos=1")
                let messages = slow.output.split(separator: "\n").filter { $0.hasPrefix("MESSAGE") }
                #expect(messages.map(String.init) == (0..<5).map { "MESSAGE work/item 2 n\($0) qos=1" })
            }
        }
    }

    /// `--max-keep-alive-seconds 30`: a v5 client asking 600 s is told 30 (paho then uses it);
    /// one asking 20 keeps its own; a v3.1.1 client asking 600 is refused (return code 2).
    @Test func serverKeepAliveCapsTheClientsKeepAlive() async throws {
        try await offPool {
            try withCustody("server-keepalive", ["--max-keep-alive-seconds", "30"]) { custody in
                let asksMore = try flowClient(["--port", "\(custody.port)", "--id", "ka-600", "--keepalive", "600"])
                defer { asksMore.stop() }
                try asksMore.waitForOutput(containing: "CONNACK rc=0")
                #expect(try connackProperties(asksMore.output)["ServerKeepAlive"] as? Int == 30)
                #expect(asksMore.output.contains("keepalive=30"), "\(asksMore.output)")
                let asksLess = try flowClient(["--port", "\(custody.port)", "--id", "ka-20", "--keepalive", "20"])
                defer { asksLess.stop() }
                try asksLess.waitForOutput(containing: "CONNACK rc=0")
                #expect(try connackProperties(asksLess.output)["ServerKeepAlive"] == nil)
                #expect(asksLess.output.contains("keepalive=20"), "\(asksLess.output)")
                let (status, _, error) = try run("/usr/bin/mosquitto_sub", [
                    "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv311", "-i", "ka-v3", "-u", "dev", "-k", "600", "-t", "x",
                ])
                #expect(status != 0)
                #expect(error.contains("identifier rejected"), "\(error)")
                try custody.waitForLog("ka-v3", "keep-alive 600s, the maximum is 30s")
            }
        }
    }

    /// The Server Keep Alive is enforced: a raw v5 client asking keep-alive 0 (none) against a
    /// maximum of 1 s is told 1 and, silent, closed with 0x8D after 1.5 s.
    @Test func serverKeepAliveIsEnforced() async throws {
        try await offPool {
            try withCustody("server-keepalive-enforced", ["--max-keep-alive-seconds", "1"]) { custody in
                let client = try RawClient(port: custody.port)
                let start = Date()
                let connack = try client.connect("silent", user: "dev", keepAlive: 0)
                #expect(connack.reasonCode == .success)
                #expect(connack.properties.serverKeepAlive == 1)
                #expect(try client.receiveUntilClosed(timeout: 10) == [.disconnect(MQTTDisconnect(reasonCode: .keepAliveTimeout))])
                #expect(Date().timeIntervalSince(start) >= 1.4)
            }
        }
    }

    @Test func badMaxKeepAliveFlagIsRefused() async throws {
        try await offPool {
            for value in ["0", "65536", "x"] {
                let (status, _, error) = try run(try builtProduct("custody").path, [
                    "--data-dir", scratchDirectory("bad-keepalive"), "--listen", "127.0.0.1:0", "--max-keep-alive-seconds", value,
                ])
                #expect(status != 0)
                #expect(error.contains("max-keep-alive-seconds"), "\(error)")
            }
        }
    }
}
