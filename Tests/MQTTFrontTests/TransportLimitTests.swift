import Foundation
import Testing

/// paho-mqtt 2.x (v5) over TLS or WebSocket: publishes at QoS 1 to a topic of `--ok` bytes, then
/// one of `--over` bytes, then at QoS 0 to the long one; or, with `--flood N`, N QoS 0 messages
/// to `rate/f` at once. One line per event:
///
///     CONNACK rc=<code>
///     PUBACK <mid> rc=<code>
///     DISCONNECT rc=<code>
private let limitPahoScript = #"""
import argparse, signal, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--transport", default="tcp")
p.add_argument("--cafile")
p.add_argument("--ok", type=int, default=1)
p.add_argument("--over", type=int, default=1)
p.add_argument("--flood", type=int)
a = p.parse_args()

def say(line):
    print(line, flush=True)

done = threading.Event()
acks = []
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, protocol=mqtt.MQTTv5, transport=a.transport)
if a.cafile:
    c.tls_set(ca_certs=a.cafile)
if a.transport == "websockets":
    c.ws_set_options(path="/mqtt")

def on_connect(client, userdata, flags, rc, properties):
    say("CONNACK rc=%d" % rc.value)
    if a.flood:
        say("FLOOD %.3f" % time.time())
        for index in range(a.flood):
            client.publish("rate/f", b"%04d" % index, qos=0)
        return
    client.publish("t" * a.ok, b"fits", qos=1)
    client.publish("t" * a.over, b"too long", qos=1)

def on_publish(client, userdata, mid, rc, properties):
    if mid > 2 or a.flood:
        return  # QoS 0: paho reports them as written
    say("PUBACK %d rc=%d" % (mid, rc.value))
    acks.append(mid)
    if len(acks) == 2:
        client.publish("t" * a.over, b"too long, no answer", qos=0)

def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value)
    done.set()

c.on_connect = on_connect
c.on_publish = on_publish
c.on_disconnect = on_disconnect
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda *_: done.set())
c.connect("127.0.0.1", a.port, keepalive=60)
c.loop_start()
done.wait(30)
c.loop_stop()
"""#

/// The limits are the connection's, whatever carries it: over TLS and WebSocket (NIO channels,
/// not the epoll transport plain TCP uses) a topic at the limit is taken, one byte more gets
/// PUBACK 0x90, and at QoS 0 DISCONNECT 0x90, as TopicLimitTests shows on TCP.
@Suite("Limits on TLS and WebSocket")
struct TransportLimitTests {
    @Test func topicLimitsHoldOverTLSAndWebSocket() async throws {
        try await offPool {
            let certificates = try IdentityCertificates()
            try withCustody("transport-limits", [
                "--listen-tls", "127.0.0.1:0", "--tls-certificate", certificates.path("server.pem"),
                "--tls-private-key", certificates.path("server.key"), "--listen-ws", "127.0.0.1:0",
                "--max-topic-bytes", "64", "--metrics", "127.0.0.1:0",
            ]) { custody in
                let tlsPort = try #require(tlsPorts(custody).first, "\(custody.stdout)")
                guard let wsLine = custody.stdout.split(separator: "\n").first(where: { $0.contains("listening ws 127.0.0.1:") }),
                    let range = wsLine.range(of: "127.0.0.1:"),
                    let wsPort = Int(wsLine[range.upperBound...].prefix(while: \.isNumber))
                else { throw E2EError.unexpected("no ws listener: \(custody.stdout)") }
                for (name, arguments) in [
                    ("tls", ["--port", "\(tlsPort)", "--cafile", certificates.path("ca.pem")]),
                    ("ws", ["--port", "\(wsPort)", "--transport", "websockets"]),
                ] {
                    let client = try Background(try pahoPython(), ["-c", limitPahoScript, "--id", "over-\(name)", "--ok", "64", "--over", "65"] + arguments)
                    defer { client.stop() }
                    let output = try client.waitForOutput(containing: "DISCONNECT", timeout: 20)
                    let lines = output.split(separator: "\n").map(String.init)
                    // 0x10: nobody subscribes, which is success; 0x90 (144): Topic Name invalid.
                    #expect(lines == ["CONNACK rc=0", "PUBACK 1 rc=16", "PUBACK 2 rc=144", "DISCONNECT rc=144"], "\(name): \(output)")
                    let end = try custody.waitForEvent { $0.sessionName.value == "over-\(name)" && $0.kind != .connected }
                    #expect(end.kind == .disconnected(.clientError), "\(name)")
                }
                #expect(try custody.limitExceeded("maxTopicBytes") == 4)
            }
        }
    }

    /// The publish budget holds over WebSocket too: a flood is slowed to the rate, and complete.
    @Test func thePublishRateHoldsOverWebSocket() async throws {
        try await offPool {
            try withCustody("transport-rate", ["--listen-ws", "127.0.0.1:0", "--publish-messages-per-second", "20"]) { custody in
                guard let wsLine = custody.stdout.split(separator: "\n").first(where: { $0.contains("listening ws 127.0.0.1:") }),
                    let range = wsLine.range(of: "127.0.0.1:"),
                    let wsPort = Int(wsLine[range.upperBound...].prefix(while: \.isNumber))
                else { throw E2EError.unexpected("no ws listener: \(custody.stdout)") }
                let watcher = try RawClient(port: custody.port)
                #expect(try watcher.connect("ws-rate-watcher").reasonCode == .success)
                try watcher.subscribe("rate/#")
                let flooder = try Background(try pahoPython(), [
                    "-c", limitPahoScript, "--id", "ws-flooder", "--port", "\(wsPort)", "--transport", "websockets",
                    "--flood", "100",
                ])
                defer { flooder.stop() }
                let output = try flooder.waitForOutput(containing: "FLOOD ")
                // The window runs from when the flood began, however late this thread sees it.
                let line = try #require(output.split(separator: "\n").first { $0.hasPrefix("FLOOD ") })
                let began = Date(timeIntervalSince1970: try #require(Double(line.dropFirst("FLOOD ".count))))
                let early = try watcher.publishes(100, within: 1.5 - Date().timeIntervalSince(began))
                // A burst of 20, then 20 a second: about 50 in 1.5 s (less, as the window starts late).
                #expect(early.count <= 70, "\(early.count) of 100 delivered in 1.5 s at 20 a second")
                let rest = try watcher.publishes(100 - early.count, within: 30)
                #expect((early + rest).map { String(buffer: $0.payload) } == (0..<100).map { String(format: "%04d", $0) })
            }
        }
    }
}
