import CustodyTesting
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Suites that start nats-server, etcd and custody nodes run one after another: leases and
/// elections are timed, and several clusters at once on two cores would let them lapse.
@Suite(.serialized) enum MessagingSuites {}

/// NATS (one server or a cluster), one etcd, and custody nodes n1, n2, … carrying messages on it.
final class MessagingCluster: @unchecked Sendable {
    let nats: RunningNATS
    let etcd: RunningEtcd
    private(set) var nodes: [RunningCustody] = []
    let replicas: Int
    let extra: [String]

    init(_ label: String, nodes count: Int = 3, natsServers: Int = 1, extra: [String] = []) throws {
        self.extra = extra
        nats = try RunningNATS(label, servers: natsServers)
        replicas = natsServers >= 3 ? 3 : 1
        do {
            etcd = try RunningEtcd(label)
        } catch {
            nats.cleanUp()
            throw error
        }
        do {
            for index in 0..<count { nodes.append(try start(node: index)) }
        } catch {
            cleanUp()
            throw error
        }
    }

    /// Node `index` (n1 for 0) connects first to NATS server `index` modulo their number.
    func start(node index: Int, directory: String? = nil) throws -> RunningCustody {
        let urls = nats.urls
        let rotated = Array(urls[(index % urls.count)...] + urls[..<(index % urls.count)])
        return try RunningCustody(
            "messaging-n\(index + 1)",
            arguments: [
                "--cluster-etcd", etcd.url, "--node-id", "n\(index + 1)", "--cluster-lease-seconds", "2",
                "--connects-per-second-per-session", "0",
                "--cluster-nats", rotated.joined(separator: ","), "--cluster-nats-replicas", "\(replicas)",
            ] + extra, directory: directory)
    }

    subscript(_ index: Int) -> RunningCustody { nodes[index] }

    /// Starts node `index` again on its data directory (after `killNode`).
    func restartNode(_ index: Int) throws {
        nodes[index] = try start(node: index, directory: nodes[index].directory)
    }

    /// Starts one more node (n4 for the fourth).
    func addNode() throws { nodes.append(try start(node: nodes.count)) }

    /// SIGKILL to one node, waited for.
    func killNode(_ index: Int) {
        kill(nodes[index].process.processIdentifier, SIGKILL)
        nodes[index].process.waitUntilExit()
    }

    var outputs: String {
        nodes.enumerated().map { "n\($0.offset + 1):\n\($0.element.stdout)\n\($0.element.stderr)" }.joined(separator: "\n")
    }

    func cleanUp() {
        for node in nodes { node.cleanUp() }
        etcd.cleanUp()
        nats.cleanUp()
    }
}

func withMessagingCluster(
    _ label: String, natsServers: Int = 1, extra: [String] = [], _ body: (MessagingCluster) throws -> Void
) throws {
    let cluster = try MessagingCluster(label, natsServers: natsServers, extra: extra)
    defer { cluster.cleanUp() }
    do {
        try body(cluster)
    } catch {
        Issue.record("cluster output:\n\(cluster.outputs)")
        throw error
    }
}

/// A paho-mqtt 2.x client (MQTT 5) that subscribes and prints what it receives, or publishes
/// a numbered stream and prints each acknowledged message:
///
///     CONNACK rc=<code> present=<0|1>
///     SUBACK <codes>
///     M <topic> <payload> q<qos> r<retain>
///     ACK <payload>          (QoS 1/2: once PUBACK/PUBCOMP came; QoS 0: once sent)
///     DONE                   (every message of the stream acknowledged)
///     DISCONNECT rc=<code>
let clientScript = #"""
import argparse, os, signal, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--user")
p.add_argument("--sub", action="append", default=[])
p.add_argument("--qos", type=int, default=1)
p.add_argument("--pub")
p.add_argument("--count", type=int, default=0)
p.add_argument("--prefix", default="m")
p.add_argument("--retain", action="store_true")
p.add_argument("--empty", action="store_true")
p.add_argument("--clean", type=int, default=1)
p.add_argument("--expiry", type=int, default=0)
p.add_argument("--inflight", type=int, default=20)
p.add_argument("--will-topic")
p.add_argument("--will-payload", default="gone")
p.add_argument("--will-qos", type=int, default=1)
p.add_argument("--will-delay", type=int, default=0)
a = p.parse_args()

def say(line):
    print(line, flush=True)

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(a.inflight)
c.reconnect_delay_set(min_delay=1, max_delay=1)
if a.user:
    c.username_pw_set(a.user)
lock = threading.Lock()
pending = {}
ready = threading.Event()

up = threading.Event()

def on_connect(client, userdata, flags, rc, properties):
    say("CONNACK rc=%d present=%d" % (rc.value, 1 if flags.session_present else 0))
    if rc.value == 136:
        # Server unavailable (a busy cluster's etcd answered late): paho connects again.
        return
    if rc.value != 0:
        os._exit(3)
    up.set()
    if a.sub:
        client.subscribe([(f, a.qos) for f in a.sub])
    ready.set()

def on_subscribe(client, userdata, mid, rcs, properties):
    say("SUBACK " + " ".join(str(r.value) for r in rcs))

def on_message(client, userdata, m):
    say("M %s %s q%d r%d" % (m.topic, m.payload.decode(), m.qos, 1 if m.retain else 0))

early = set()

def on_publish(client, userdata, mid, rc, properties):
    # Called with paho's own lock held: ours is never held while calling into paho.
    with lock:
        payload = pending.pop(mid, None)
        if payload is None:
            early.add(mid)
    if payload is not None:
        say("ACK %s" % payload)

def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value)
    if up.is_set():
        os._exit(0)

c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.on_publish = on_publish
c.on_disconnect = on_disconnect
signal.signal(signal.SIGTERM, lambda *_: (c.disconnect(), time.sleep(0.2), os._exit(0)))
if a.will_topic:
    will_props = Properties(PacketTypes.WILLMESSAGE)
    if a.will_delay:
        will_props.WillDelayInterval = a.will_delay
    c.will_set(a.will_topic, a.will_payload, qos=a.will_qos, properties=will_props)
props = Properties(PacketTypes.CONNECT)
if a.expiry:
    props.SessionExpiryInterval = a.expiry
c.connect("127.0.0.1", a.port, keepalive=30, clean_start=bool(a.clean), properties=props)
c.loop_start()
ready.wait(60)
if a.pub:
    for i in range(a.count):
        payload = "%s-%d" % (a.prefix, i)
        info = c.publish(a.pub, b"" if a.empty else payload, qos=a.qos, retain=a.retain)
        with lock:
            acked = info.mid in early
            if acked:
                early.discard(info.mid)
            else:
                pending[info.mid] = payload
        if acked:
            say("ACK %s" % payload)
    deadline = time.time() + 120
    while time.time() < deadline:
        with lock:
            if not pending:
                break
        time.sleep(0.01)
    say("DONE")
    c.disconnect()
    time.sleep(0.5)
    os._exit(0)
while True:
    time.sleep(1)
"""#

/// The script, written once.
let clientScriptPath: String = {
    let path = scratchDirectory("cluster-client") + ".py"
    FileManager.default.createFile(atPath: path, contents: Data(clientScript.utf8))
    return path
}()

/// One paho client (see `clientScript`) on a node.
final class PahoClient: @unchecked Sendable {
    let spawned: SpawnedProcess

    /// `launcher`: a command that runs it elsewhere (a network namespace's `ip netns exec NS`).
    init(port: Int, id: String, _ arguments: [String], launcher: [String] = []) throws {
        let command = launcher + [try pahoPython(), clientScriptPath, "--port", "\(port)", "--id", id] + arguments
        spawned = try SpawnedProcess(command[0], Array(command.dropFirst()))
    }

    static func subscriber(
        port: Int, id: String, filters: [String], qos: Int = 1, user: String? = nil, launcher: [String] = []
    ) throws -> PahoClient {
        let client = try PahoClient(
            port: port, id: id, ["--qos", "\(qos)"] + filters.flatMap { ["--sub", $0] } + (user.map { ["--user", $0] } ?? []),
            launcher: launcher)
        try client.spawned.waitForOutput(containing: "SUBACK", timeout: 20)
        return client
    }

    static func publisher(
        port: Int, id: String, topic: String, count: Int, qos: Int, prefix: String, retain: Bool = false, empty: Bool = false,
        launcher: [String] = []
    ) throws -> PahoClient {
        try PahoClient(port: port, id: id, [
            "--pub", topic, "--count", "\(count)", "--qos", "\(qos)", "--prefix", prefix,
        ] + (retain ? ["--retain"] : []) + (empty ? ["--empty"] : []), launcher: launcher)
    }

    var lines: [Substring] { spawned.output.split(separator: "\n") }

    /// `M` lines as "topic payload qN rN".
    var messages: [String] { lines.filter { $0.hasPrefix("M ") }.map { String($0.dropFirst(2)) } }
    /// Payloads of the `M` lines.
    var payloads: [String] { messages.map { String($0.split(separator: " ")[1]) } }
    var acknowledged: [String] { lines.filter { $0.hasPrefix("ACK ") }.map { String($0.dropFirst(4)) } }

    /// Waits until `done` holds for what arrived.
    func wait(timeout: Double = 30, until done: (PahoClient) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if done(self) { return }
            usleep(20_000)
        }
        if !done(self) { throw TestFailure.timeout("client output:\n\(spawned.output.suffix(3000))") }
    }

    func stop() { spawned.kill() }
}
