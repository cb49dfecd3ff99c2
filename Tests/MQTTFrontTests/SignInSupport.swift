import CustodyTesting
import Foundation
import Testing

// What the sign-in end-to-end tests share: a paho-mqtt 2.x client that can send MQTT 5
// enhanced authentication (Authentication Method and Data) and reports, one line per event,
// `CONNACK rc=<code> method=<name>`, `SUBACK <codes>`, `DISCONNECT rc=<code>`; and the
// configuration file of a test.

let signInPahoScript = #"""
import argparse, signal, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--user")
p.add_argument("--password")
p.add_argument("--method")
p.add_argument("--data")
p.add_argument("--v3", action="store_true")
p.add_argument("--subscribe", action="append", default=[])
a = p.parse_args()

def say(line):
    print(line, flush=True)

v5 = not a.v3
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
if a.user is not None or a.password is not None:
    c.username_pw_set(a.user or "", a.password)
done = threading.Event()

def on_connect(client, userdata, flags, rc, properties):
    method = getattr(properties, "AuthenticationMethod", None) if properties else None
    say("CONNACK rc=%d method=%s" % (rc.value, method))
    if rc.value != 0:
        done.set()
        return
    for topic in a.subscribe:
        client.subscribe(topic, qos=1)

def on_subscribe(client, userdata, mid, rcs, properties):
    say("SUBACK " + " ".join(str(r.value) for r in rcs))

def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value)
    done.set()
    client.disconnect()

c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_disconnect = on_disconnect
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda *_: done.set())
props = None
if v5:
    props = Properties(PacketTypes.CONNECT)
    if a.method:
        props.AuthenticationMethod = a.method
    if a.data:
        props.AuthenticationData = a.data.encode()
    c.connect("127.0.0.1", a.port, keepalive=60, clean_start=True, properties=props)
else:
    c.connect("127.0.0.1", a.port, keepalive=60)
c.loop_start()
done.wait()
c.loop_stop()
"""#

/// Starts the sign-in paho client.
func signInPaho(
    _ custody: RunningCustody, id: String, user: String? = nil, password: String? = nil, method: String? = nil,
    data: String? = nil, v3: Bool = false, subscribe: [String] = []
) throws -> Background {
    let script = scratchDirectory("paho-signin") + ".py"
    try signInPahoScript.write(toFile: script, atomically: true, encoding: .utf8)
    var arguments = ["-u", script, "--port", "\(custody.port)", "--id", id]
    if let user { arguments += ["--user", user] }
    if let password { arguments += ["--password", password] }
    if let method { arguments += ["--method", method] }
    if let data { arguments += ["--data", data] }
    if v3 { arguments.append("--v3") }
    for topic in subscribe { arguments += ["--subscribe", topic] }
    return try Background(try pahoPython(), arguments)
}

/// The CONNACK code a sign-in paho client reported.
func connackCode(_ client: Background, timeout: Double = 10) throws -> Int {
    let out = try client.waitForOutput(containing: "CONNACK rc=", timeout: timeout)
    let line = out.split(separator: "\n").first { $0.hasPrefix("CONNACK rc=") }!
    return Int(line.dropFirst("CONNACK rc=".count).prefix { $0.isNumber })!
}

/// A configuration file in a fresh directory (relative paths in it are taken from there).
func signInConfiguration(_ label: String, _ yaml: String) throws -> (path: String, directory: String) {
    let directory = scratchDirectory("signin-\(label)")
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let path = directory + "/custody.yaml"
    try yaml.write(toFile: path, atomically: true, encoding: .utf8)
    return (path, directory)
}

/// mosquitto_pub once; its exit status and what it said.
func mosquittoPublish(_ custody: RunningCustody, _ arguments: [String]) throws -> (Int32, String) {
    let (status, out, err) = try run(
        "/usr/bin/mosquitto_pub", ["-h", "127.0.0.1", "-p", "\(custody.port)", "-t", "t/signin", "-m", "x"] + arguments,
        timeout: 15)
    return (status, out + err)
}
