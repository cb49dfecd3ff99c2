import Foundation

/// A paho-mqtt 2.x client that connects once, reports what happens on standard output, one
/// line per event, and ends when the server ends the connection (or on SIGTERM):
///
///     CONNACK rc=<code> present=<0|1>
///     SUBACK
///     MESSAGE <topic> <payload> qos=<q>
///     DISCONNECT rc=<code>
let pahoScript = #"""
import argparse, signal, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--user")
p.add_argument("--v3", action="store_true")
p.add_argument("--clean", type=int, default=1)
p.add_argument("--expiry", type=int)
p.add_argument("--keepalive", type=int, default=60)
p.add_argument("--subscribe")
p.add_argument("--qos", type=int, default=1)
p.add_argument("--disconnect-after", type=float)
a = p.parse_args()

def say(line):
    print(line, flush=True)

v5 = not a.v3
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id,
                protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                clean_session=None if v5 else bool(a.clean))
if a.user is not None:
    c.username_pw_set(a.user)
done = threading.Event()

def on_connect(client, userdata, flags, rc, properties):
    say("CONNACK rc=%d present=%d" % (rc.value, 1 if flags.session_present else 0))
    if rc.value != 0:
        done.set()
        client.disconnect()
    elif a.subscribe:
        client.subscribe(a.subscribe, qos=a.qos)

def on_subscribe(client, userdata, mid, rcs, properties):
    say("SUBACK " + " ".join(str(r.value) for r in rcs))

def on_message(client, userdata, m):
    say("MESSAGE %s %s qos=%d" % (m.topic, m.payload.decode(), m.qos))

def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value)
    done.set()
    client.disconnect()

c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.on_disconnect = on_disconnect
# Foundation's Process starts children with SIGTERM blocked.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda *_: done.set())

props = None
if v5:
    props = Properties(PacketTypes.CONNECT)
    if a.expiry is not None:
        props.SessionExpiryInterval = a.expiry
    c.connect("127.0.0.1", a.port, keepalive=a.keepalive, clean_start=bool(a.clean), properties=props)
else:
    c.connect("127.0.0.1", a.port, keepalive=a.keepalive)
c.loop_start()
if a.disconnect_after is not None:
    done.wait(a.disconnect_after)
    if not done.is_set():
        c.disconnect()
        say("DISCONNECTED")
done.wait()
c.loop_stop()
"""#

/// Starts the paho script with these arguments.
func paho(_ arguments: [String]) throws -> Background {
    let script = scratchDirectory("paho") + ".py"
    try pahoScript.write(toFile: script, atomically: true, encoding: .utf8)
    return try Background(try pahoPython(), ["-u", script] + arguments)
}
