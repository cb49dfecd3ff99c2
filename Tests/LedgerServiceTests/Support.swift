import CustodyTesting
import Foundation
import LedgerWire
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A blocking client of the ledger socket, as the plugin is: one frame out, frames in.
final class LedgerSocketClient {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8) + [0])
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            close(descriptor)
            throw TestFailure.unexpected("cannot connect to \(path): errno \(errno)")
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(descriptor) }

    func send(raw bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func send(_ frame: LedgerWireFrame) {
        send(raw: Array(frame.encoded().readableBytesView))
    }

    /// The next frame; nil when the ledger closed the connection.
    func receive() throws -> LedgerWireFrame? {
        guard let prefix = try read(4) else { return nil }
        let length = prefix.reduce(0) { $0 << 8 | Int($1) }
        guard let body = try read(length) else { throw TestFailure.unexpected("frame cut short") }
        return try LedgerWireFrame.decode(body: ByteBuffer(bytes: body))
    }

    /// Sends a request and returns its answer (notices on the way are returned in `notices`).
    func call(_ message: LedgerWireMessage, id: UInt32, notices: inout [LedgerWireMessage]) throws -> LedgerWireMessage {
        send(LedgerWireFrame(requestID: id, message: message))
        while let frame = try receive() {
            if frame.requestID == id, !frame.message.isNotice { return frame.message }
            notices.append(frame.message)
        }
        throw TestFailure.unexpected("the ledger closed the socket instead of answering \(message)")
    }

    func call(_ message: LedgerWireMessage, id: UInt32 = 1) throws -> LedgerWireMessage {
        var notices: [LedgerWireMessage] = []
        return try call(message, id: id, notices: &notices)
    }

    private func read(_ count: Int) throws -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress! + done, count - done, 0) }
            if n == 0 { return nil }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { return nil }
                throw TestFailure.unexpected("recv: errno \(errno)")
            }
            done += n
        }
        return bytes
    }
}

extension LedgerWireMessage {
    var isNotice: Bool {
        if case .takenOver = self { return true }
        return false
    }
}

/// A ledger socket path short enough for sun_path, in a directory of its own.
func ledgerSocketPath(_ label: String) throws -> String {
    let directory = "/tmp/custody-ls-\(label)-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    return directory + "/ledger.sock"
}

/// A claim as the plugin sends it for a 3.1.1 CONNECT.
func wireClaim(_ session: String, user: String?, clean: Bool = true, password: String? = nil) -> LedgerWireMessage {
    .claim(WireClaim(
        username: user, password: password.map { Array($0.utf8) }, sessionName: session, protocolVersion: 4,
        cleanStart: clean, requestedExpiryInterval: clean ? 0 : .max, remoteAddress: "127.0.0.1"))
}

/// custody's ledger in `directory`, read by `custody-audit` (history or verify).
func audit(_ arguments: [String]) throws -> (Int32, String, String) {
    try run(product: "custody-audit", arguments)
}

/// A paho-mqtt client that connects once (no reconnection) and reports, a line each:
/// `CONNACK rc=N`, `SUBACK codes`, `PUBACK rc=N`, `MESSAGE topic payload`, `DISCONNECT rc=N`.
let pahoOnce = #"""
import argparse, signal, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--user")
p.add_argument("--v3", action="store_true")
p.add_argument("--subscribe")
p.add_argument("--publish")
a = p.parse_args()
def say(line): print(line, flush=True)
v5 = not a.v3
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                clean_session=None if v5 else False)
if a.user is not None: c.username_pw_set(a.user)
done = threading.Event()
def on_connect(client, userdata, flags, rc, properties):
    say("CONNACK rc=%d" % rc.value)
    if rc.value != 0:
        done.set(); client.disconnect(); return
    if a.subscribe: client.subscribe(a.subscribe, qos=1)
    if a.publish: client.publish(a.publish, b"x", qos=1)
def on_subscribe(client, userdata, mid, rcs, properties): say("SUBACK " + " ".join(str(r.value) for r in rcs))
def on_publish(client, userdata, mid, rc, properties): say("PUBACK rc=%d" % rc.value)
def on_message(client, userdata, m): say("MESSAGE %s %s" % (m.topic, m.payload.decode()))
def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value); done.set(); client.disconnect()
c.on_connect, c.on_subscribe, c.on_publish, c.on_message, c.on_disconnect = on_connect, on_subscribe, on_publish, on_message, on_disconnect
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda *_: done.set())
c.connect("127.0.0.1", a.port, keepalive=60)
c.loop_start()
done.wait()
c.disconnect()
c.loop_stop()
"""#

func paho(_ arguments: [String]) throws -> SpawnedProcess {
    let python = packageRoot.appendingPathComponent(".venv-tests/bin/python").path
    guard FileManager.default.isExecutableFile(atPath: python) else {
        throw TestFailure.missing("\(python): run Tools/custody-setup")
    }
    let script = scratchDirectory("paho-once") + ".py"
    try pahoOnce.write(toFile: script, atomically: true, encoding: .utf8)
    return try SpawnedProcess(python, ["-u", script] + arguments)
}

/// mosquitto_pub/mosquitto_sub run to their end.
func mosquittoClient(_ tool: String, port: Int, _ arguments: [String], timeout: Double = 10) throws -> (Int32, String) {
    let (status, out, err) = try run("/usr/bin/\(tool)", ["-h", "127.0.0.1", "-p", "\(port)"] + arguments, timeout: timeout)
    return (status, out + err)
}

/// Debian's mosquitto with the custody plugin on `socket`.
func mosquittoWithPlugin(_ label: String, socket: String, lines: [String] = []) throws -> RunningMosquitto {
    try RunningMosquitto(label, lines: [
        "allow_anonymous true", "plugin \(try builtProduct("libcustody-mosquitto.so").path)", "plugin_opt_socket \(socket)",
    ] + lines)
}

/// `custody-audit history --session S` lines after the header: "KIND REASON CLIENT CONN".
func historyLines(_ directory: String, session: String) throws -> [String] {
    let (status, out, err) = try audit(["history", "--data-dir", directory, "--session", session])
    guard status == 0 else { throw TestFailure.unexpected("custody-audit history: \(err)") }
    return out.split(separator: "\n").dropFirst().map { line in
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        return "\(fields[2]) \(fields[3]) \(fields[4])"
    }
}

func verifyLedger(_ directory: String) throws {
    let (status, out, err) = try audit(["verify", "--data-dir", directory])
    guard status == 0 else { throw TestFailure.unexpected("custody-audit verify failed: \(out)\(err)") }
}
