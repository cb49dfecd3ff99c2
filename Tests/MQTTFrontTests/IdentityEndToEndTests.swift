import Foundation
import SessionLedger
import Testing

// Client identity end to end: the real `custody` with a configuration file (client registry,
// mqtts listeners, password file), certificates made by openssl in the test run, and real
// clients (paho-mqtt with tls_set, mosquitto_pub/sub with --cafile/--cert/--key).

/// Certificates for these tests, made by openssl in a temporary folder: a CA, the server's
/// certificate for 127.0.0.1, CA-issued client certificates, a self-signed one, and one
/// issued by a CA the server does not trust.
final class IdentityCertificates: Sendable {
    let directory: String

    init() throws {
        directory = scratchDirectory("certs")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        func client(_ file: String, _ subject: String, _ san: String? = nil, ca: String = "ca") -> String {
            let ext = san.map { "printf 'subjectAltName=\($0)\\n' > \(file).ext\n" } ?? "printf '\\n' > \(file).ext\n"
            return ext + """
                openssl req $key -keyout \(file).key -out \(file).csr -subj '\(subject)' 2>/dev/null
                openssl x509 -req -in \(file).csr -CA \(ca).pem -CAkey \(ca).key -CAcreateserial -out \(file).pem -days 2 -extfile \(file).ext 2>/dev/null

                """
        }
        try shell("""
            set -e
            key='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'
            openssl req -x509 $key -keyout ca.key -out ca.pem -days 2 -subj '/CN=Custody Identity Test CA' 2>/dev/null
            openssl req -x509 $key -keyout rogue-ca.key -out rogue-ca.pem -days 2 -subj '/CN=Rogue CA' 2>/dev/null
            \(client("server", "/CN=localhost", "DNS:localhost,IP:127.0.0.1"))
            \(client("seed", "/CN=ipv4=127.0.0.1"))
            \(client("device-1", "/CN=device-1"))
            \(client("device-2", "/CN=device-2"))
            \(client("device-7", "/CN=device-7"))
            \(client("device-off", "/CN=device-off"))
            \(client("sensor", "/CN=sensor-hardware-id", "DNS:sensor.example"))
            \(client("rogue", "/CN=ipv4=127.0.0.1", ca: "rogue-ca"))
            openssl req -x509 $key -keyout self.key -out self.pem -days 2 -subj '/CN=self-1' 2>/dev/null
            openssl req -x509 $key -keyout self-other.key -out self-other.pem -days 2 -subj '/CN=self-1' 2>/dev/null
            """)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func path(_ name: String) -> String { directory + "/" + name }

    @discardableResult
    func shell(_ script: String) throws -> String {
        let (status, out, err) = try run("/bin/sh", ["-c", "cd '\(directory)' && " + script], timeout: 60)
        guard status == 0 else { throw E2EError.unexpected("openssl failed (\(status)): \(err)") }
        return out
    }

    /// openssl's SHA-256 fingerprint of a certificate, as 64 lowercase hex digits.
    func thumbprint(_ name: String) throws -> String {
        let line = try shell("openssl x509 -in \(name).pem -noout -fingerprint -sha256")
        return String(line.split(separator: "=").last!.filter(\.isHexDigit)).lowercased()
    }
}

/// A paho-mqtt 2.x client over TLS (or plain TCP without --cafile) that connects once and
/// reports, one line per event: `CONNACK rc=<code>`, `SUBACK`, `MESSAGE <topic> <payload>`,
/// `DISCONNECT rc=<code>`, or `ERROR <what>` when the connection could not be made.
let tlsPahoScript = #"""
import argparse, signal, ssl, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--id", required=True)
p.add_argument("--user")
p.add_argument("--password")
p.add_argument("--cafile")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--subscribe")
a = p.parse_args()

def say(line):
    print(line, flush=True)

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=a.id, protocol=mqtt.MQTTv5)
if a.user is not None:
    c.username_pw_set(a.user, a.password)
if a.cafile:
    c.tls_set(ca_certs=a.cafile, certfile=a.cert, keyfile=a.key)
done = threading.Event()

def on_connect(client, userdata, flags, rc, properties):
    say("CONNACK rc=%d" % rc.value)
    if rc.value != 0:
        done.set()
    elif a.subscribe:
        client.subscribe(a.subscribe, qos=1)

def on_subscribe(client, userdata, mid, rcs, properties):
    say("SUBACK")

def on_message(client, userdata, m):
    say("MESSAGE %s %s" % (m.topic, m.payload.decode()))

def on_disconnect(client, userdata, flags, rc, properties):
    say("DISCONNECT rc=%d" % rc.value)
    done.set()

c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.on_disconnect = on_disconnect
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda *_: done.set())
try:
    c.connect("127.0.0.1", a.port, keepalive=60, clean_start=True)
except Exception as e:
    say("ERROR %s" % e)
    sys.exit(2)
c.loop_start()
done.wait()
c.loop_stop()
"""#

/// Starts the TLS paho script.
func tlsPaho(
    port: Int, id: String, user: String? = nil, password: String? = nil, certificates: IdentityCertificates? = nil,
    client: String? = nil, subscribe: String? = nil
) throws -> Background {
    let script = scratchDirectory("paho-tls") + ".py"
    try tlsPahoScript.write(toFile: script, atomically: true, encoding: .utf8)
    var arguments = ["-u", script, "--port", "\(port)", "--id", id]
    if let user { arguments += ["--user", user] }
    if let password { arguments += ["--password", password] }
    if let certificates {
        arguments += ["--cafile", certificates.path("ca.pem")]
        if let client { arguments += ["--cert", certificates.path("\(client).pem"), "--key", certificates.path("\(client).key")] }
    }
    if let subscribe { arguments += ["--subscribe", subscribe] }
    return try Background(try pahoPython(), arguments)
}

/// The mqtts ports custody printed, in the configuration's order.
func tlsPorts(_ custody: RunningCustody) -> [Int] {
    custody.stdout.split(separator: "\n").filter { $0.hasPrefix("custody: listening mqtts 127.0.0.1:") }
        .compactMap { Int($0.split(separator: ":").last ?? "") }
}

/// The rejection recorded for `session`, if any.
func rejection(_ custody: RunningCustody, session: String) throws -> RejectionReason? {
    for event in try custody.events() where event.sessionName.value == session {
        if case .rejected(let reason) = event.kind { return reason }
    }
    return nil
}

/// A paho client's first CONNACK code (or its ERROR line).
func connackCode(_ client: Background) throws -> String {
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
        for line in client.output.split(separator: "\n") {
            if line.hasPrefix("CONNACK rc=") { return String(line.dropFirst("CONNACK rc=".count)) }
            if line.hasPrefix("ERROR") { return String(line) }
        }
        if !client.process.isRunning, !client.output.contains("CONNACK") {
            return "exited: \(client.output) \(client.errors)"
        }
        usleep(10_000)
    }
    throw E2EError.timeout("CONNACK from paho: \(client.output) \(client.errors)")
}

/// mosquitto_pub's verdict on a v3.1.1 CONNECT over TLS: its error text, or "" when accepted
/// (it published and exited 0).
func mosquittoV311Refusal(port: Int, certificates: IdentityCertificates, client: String, user: String?, id: String) throws -> String {
    var arguments = [
        "-h", "127.0.0.1", "-p", "\(port)", "-V", "mqttv311", "-i", id, "-t", "identity/probe", "-m", "probe",
        "--cafile", certificates.path("ca.pem"), "--cert", certificates.path("\(client).pem"),
        "--key", certificates.path("\(client).key"),
    ]
    if let user { arguments += ["-u", user] }
    let (status, out, err) = try run("/usr/bin/mosquitto_pub", arguments, timeout: 15)
    return status == 0 ? "" : "status \(status): " + out + err
}

@Suite("Client identity end to end", .serialized)
struct IdentityEndToEndTests {
    let certificates: IdentityCertificates

    /// openssl runs for seconds: off the pool, like the tests.
    init() async throws {
        certificates = try await offPool { try IdentityCertificates() }
    }

    /// A custody with the registry of these tests: two mqtts listeners, the first verifying
    /// client certificates against the CA, the second taking self-signed ones (thumbprints).
    func withRegistry(_ label: String, _ body: (RunningCustody, _ ca: Int, _ selfSigned: Int) throws -> Void) throws {
        let thumbprint = try certificates.thumbprint("self")
        let config = certificates.path("\(label).yaml")
        try """
            listeners:
              - { protocol: mqtts, address: 127.0.0.1:0, certificate: server.pem, privateKey: server.key,
                  clientCertificates: required, trustedCertificates: [ca.pem] }
              - { protocol: mqtts, address: 127.0.0.1:0, certificate: server.pem, privateKey: server.key,
                  clientCertificates: required }
            namespace:
              alternativeAuthenticationNameSources: [ClientCertificateSubject]
              registeredClientsOnly: true
            clients:
              - { authenticationName: ipv4=127.0.0.1 }
              - { authenticationName: device-7, attributes: { floor: 3 } }
              - { authenticationName: sensor.example, validationScheme: DnsMatchesAuthenticationName }
              - { authenticationName: self-1, validationScheme: ThumbprintMatch, allowedThumbprints: [\(thumbprint)] }
              - { authenticationName: device-off, state: Disabled }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let custody = try RunningCustody(label, arguments: ["--config", config])
        defer { custody.cleanUp() }
        let ports = tlsPorts(custody)
        try #require(ports.count == 2, "\(custody.stdout)")
        do {
            try body(custody, ports[0], ports[1])
        } catch {
            Issue.record("custody log:\n\(custody.stderr)")
            throw error
        }
    }

    /// The seed's example: client `ipv4=127.0.0.1` (subject CN `ipv4=127.0.0.1`, default
    /// scheme) holds `sessionId1` and `sessionId2` at once with the same certificate.
    @Test func theSeedClientOpensTwoSessionsWithOneCertificate() async throws {
        try await offPool {
            try withRegistry("seed") { custody, port, _ in
                let first = try tlsPaho(port: port, id: "sessionId1", user: "ipv4=127.0.0.1", certificates: certificates, client: "seed")
                let second = try tlsPaho(port: port, id: "sessionId2", user: "ipv4=127.0.0.1", certificates: certificates, client: "seed")
                defer { first.stop(); second.stop() }
                #expect(try connackCode(first) == "0")
                #expect(try connackCode(second) == "0")
                try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "sessionId2" }
                let connected = try custody.events().filter { $0.kind == .connected }
                #expect(Set(connected.map(\.sessionName.value)) == ["sessionId1", "sessionId2"])
                #expect(connected.allSatisfy { $0.authenticationName.value == "ipv4=127.0.0.1" })
                #expect(!first.output.contains("DISCONNECT") && !second.output.contains("DISCONNECT"))
            }
        }
    }

    /// A Username the certificate does not prove, an unknown client, and the DNS scheme's match.
    @Test func aUsernameTheCertificateDoesNotProveIsRefused() async throws {
        try await offPool {
            try withRegistry("mismatch") { custody, port, _ in
                // The seed certificate (CN ipv4=127.0.0.1) claiming device-7: 0x87, recorded.
                let liar = try tlsPaho(port: port, id: "liar-1", user: "device-7", certificates: certificates, client: "seed")
                defer { liar.stop() }
                #expect(try connackCode(liar) == "135")
                try custody.waitForEvent { $0.sessionName.value == "liar-1" }
                #expect(try rejection(custody, session: "liar-1") == .authenticationFailed)
                let line = try custody.waitForLog("connect rejected", "session_name=liar-1")
                #expect(line.contains("does not match") && line.contains("reason_code=0x87"), "\(line)")
                // v3.1.1: return code 5 (not authorized).
                let v3 = try mosquittoV311Refusal(port: port, certificates: certificates, client: "seed", user: "device-7", id: "liar-3")
                #expect(v3.contains("not authorised"), "\(v3)")
                #expect(try rejection(custody, session: "liar-3") == .authenticationFailed)
                // Not in the registry at all.
                let stranger = try tlsPaho(port: port, id: "stranger-1", user: "stranger", certificates: certificates, client: "seed")
                defer { stranger.stop() }
                #expect(try connackCode(stranger) == "135")
                try custody.waitForEvent { $0.sessionName.value == "stranger-1" }
                #expect(try rejection(custody, session: "stranger-1") == .unknownClient)
                // DnsMatchesAuthenticationName: the certificate's DNS name, not its CN, is the client.
                let sensor = try tlsPaho(port: port, id: "sensor-s1", user: "sensor.example", certificates: certificates, client: "sensor")
                defer { sensor.stop() }
                #expect(try connackCode(sensor) == "0")
                let dnsLiar = try tlsPaho(port: port, id: "sensor-s2", user: "sensor.example", certificates: certificates, client: "device-7")
                defer { dnsLiar.stop() }
                #expect(try connackCode(dnsLiar) == "135")
            }
        }
    }

    /// ThumbprintMatch: a self-signed certificate, known only by its SHA-256 thumbprint.
    @Test func aSelfSignedClientIsKnownByItsThumbprint() async throws {
        try await offPool {
            try withRegistry("thumbprint") { custody, _, selfSigned in
                let known = try tlsPaho(port: selfSigned, id: "self-s1", user: "self-1", certificates: certificates, client: "self")
                defer { known.stop() }
                #expect(try connackCode(known) == "0")
                try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "self-s1" }
                // Same subject, another key pair: another thumbprint.
                let impostor = try tlsPaho(port: selfSigned, id: "self-s2", user: "self-1", certificates: certificates, client: "self-other")
                defer { impostor.stop() }
                #expect(try connackCode(impostor) == "135")
                try custody.waitForEvent { $0.sessionName.value == "self-s2" }
                #expect(try rejection(custody, session: "self-s2") == .authenticationFailed)
            }
        }
    }

    @Test func aDisabledClientIsRefused() async throws {
        try await offPool {
            try withRegistry("disabled") { custody, port, _ in
                let off = try tlsPaho(port: port, id: "off-1", user: "device-off", certificates: certificates, client: "device-off")
                defer { off.stop() }
                #expect(try connackCode(off) == "135")
                try custody.waitForEvent { $0.sessionName.value == "off-1" }
                #expect(try rejection(custody, session: "off-1") == .clientDisabled)
                let line = try custody.waitForLog("connect rejected", "session_name=off-1")
                #expect(line.contains("clientDisabled"), "\(line)")
                let v3 = try mosquittoV311Refusal(port: port, certificates: certificates, client: "device-off", user: "device-off", id: "off-3")
                #expect(v3.contains("not authorised"), "\(v3)")
            }
        }
    }

    /// No Username: alternativeAuthenticationNameSources names the client from its certificate.
    @Test func aClientWithoutUsernameIsNamedByItsCertificate() async throws {
        try await offPool {
            try withRegistry("noname") { custody, port, _ in
                let client = try tlsPaho(port: port, id: "lonely-7", certificates: certificates, client: "device-7")
                defer { client.stop() }
                #expect(try connackCode(client) == "0")
                let event = try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "lonely-7" }
                #expect(event.authenticationName.value == "device-7")
                // With mosquitto_sub too (v3.1.1, no -u): accepted, so no refusal text.
                #expect(try mosquittoV311Refusal(port: port, certificates: certificates, client: "device-7", user: nil, id: "lonely-8") == "")
                let second = try custody.waitForEvent { $0.kind == .connected && $0.sessionName.value == "lonely-8" }
                #expect(second.authenticationName.value == "device-7")
            }
        }
    }

    /// A certificate from a CA the listener does not trust ends in the TLS handshake: no
    /// CONNECT is ever read, nothing reaches the ledger.
    @Test func anUntrustedCertificateIsRefusedInTheHandshake() async throws {
        try await offPool {
            try withRegistry("untrusted") { custody, port, _ in
                let (status, out, err) = try run("/usr/bin/mosquitto_pub", [
                    "-h", "127.0.0.1", "-p", "\(port)", "-V", "mqttv5", "-i", "rogue-1", "-u", "ipv4=127.0.0.1",
                    "-t", "identity/rogue", "-m", "x", "--tls-version", "tlsv1.2",
                    "--cafile", certificates.path("ca.pem"), "--cert", certificates.path("rogue.pem"),
                    "--key", certificates.path("rogue.key"),
                ], timeout: 15)
                #expect(status != 0, "mosquitto_pub: \(out) \(err)")
                try custody.waitForLog("TLS connection closed")
                // TLS 1.3 (paho's default) as well: the client may finish its side first, but no CONNACK comes.
                let paho = try tlsPaho(port: port, id: "rogue-2", user: "ipv4=127.0.0.1", certificates: certificates, client: "rogue")
                defer { paho.stop() }
                let code = try connackCode(paho)
                #expect(code != "0" && !code.hasPrefix("1"), "\(code)")
                // A client that is trusted still gets in afterwards; the rogue ones left no trace.
                let good = try tlsPaho(port: port, id: "after-rogue", user: "ipv4=127.0.0.1", certificates: certificates, client: "seed")
                defer { good.stop() }
                #expect(try connackCode(good) == "0")
                try custody.waitForEvent { $0.sessionName.value == "after-rogue" }
                #expect(try custody.events().allSatisfy { !$0.sessionName.value.hasPrefix("rogue") })
            }
        }
    }

    /// Mosquitto's password file, set by flags only (`--password-file`, `--listen-tls` with
    /// server-only TLS): right password in, wrong one out with 0x86 (v5) and 4 (v3.1.1).
    @Test func passwordFileUsersEndToEnd() async throws {
        try await offPool {
            let passwords = certificates.path("passwords")
            let (status, _, err) = try run("/usr/bin/mosquitto_passwd", ["-c", "-b", passwords, "alice", "s3cret"])
            try #require(status == 0, "mosquitto_passwd: \(err)")
            let custody = try RunningCustody("passwords", arguments: [
                "--password-file", passwords, "--listen-tls", "127.0.0.1:0",
                "--tls-certificate", certificates.path("server.pem"), "--tls-private-key", certificates.path("server.key"),
            ])
            defer { custody.cleanUp() }
            let tls = try #require(tlsPorts(custody).first, "\(custody.stdout)")
            let right = try tlsPaho(port: custody.port, id: "alice-1", user: "alice", password: "s3cret")
            defer { right.stop() }
            #expect(try connackCode(right) == "0")
            let overTLS = try tlsPaho(port: tls, id: "alice-2", user: "alice", password: "s3cret", certificates: certificates)
            defer { overTLS.stop() }
            #expect(try connackCode(overTLS) == "0")
            let wrong = try tlsPaho(port: custody.port, id: "alice-3", user: "alice", password: "guess")
            defer { wrong.stop() }
            #expect(try connackCode(wrong) == "134")
            try custody.waitForEvent { $0.sessionName.value == "alice-3" }
            #expect(try rejection(custody, session: "alice-3") == .authenticationFailed)
            let line = try custody.waitForLog("connect rejected", "session_name=alice-3")
            #expect(line.contains("wrong username or password") && line.contains("reason_code=0x86"), "\(line)")
            let (_, out, error) = try run("/usr/bin/mosquitto_sub", [
                "-h", "127.0.0.1", "-p", "\(custody.port)", "-V", "mqttv311", "-i", "alice-4", "-u", "alice", "-P", "guess",
                "-t", "t", "-W", "2",
            ], timeout: 15)
            #expect((out + error).contains("bad user name or password"), "\(out) \(error)")
            let nobody = try tlsPaho(port: custody.port, id: "anon-1")
            defer { nobody.stop() }
            #expect(try connackCode(nobody) == "134")
        }
    }

    /// SIGHUP reloads the registry: a client now disabled is disconnected (v5 0x87, ledger
    /// `disconnected(clientAuthenticationError)`), another client's connection stays up; a
    /// file that does not load keeps the registry in force.
    @Test func sighupDisconnectsADisabledClientAndLeavesTheOthers() async throws {
        try await offPool {
            let config = certificates.path("reload.yaml")
            func write(device2: String) throws {
                try """
                    listeners:
                      - { protocol: mqtts, address: 127.0.0.1:0, certificate: server.pem, privateKey: server.key,
                          clientCertificates: required, trustedCertificates: [ca.pem] }
                    namespace: { registeredClientsOnly: true }
                    clients:
                      - { authenticationName: device-1 }
                      - { authenticationName: device-2, state: \(device2) }
                    """.write(toFile: config, atomically: true, encoding: .utf8)
            }
            try write(device2: "Enabled")
            let custody = try RunningCustody("reload", arguments: ["--config", config])
            defer { custody.cleanUp() }
            let port = try #require(tlsPorts(custody).first, "\(custody.stdout)")
            let one = try tlsPaho(port: port, id: "d1-sub", user: "device-1", certificates: certificates, client: "device-1",
                                  subscribe: "reload/t")
            let two = try tlsPaho(port: port, id: "d2-sub", user: "device-2", certificates: certificates, client: "device-2")
            defer { one.stop(); two.stop() }
            try one.waitForOutput(containing: "SUBACK")
            #expect(try connackCode(two) == "0")

            try write(device2: "Disabled")
            kill(custody.process.processIdentifier, SIGHUP)
            try two.waitForOutput(containing: "DISCONNECT rc=135")
            let ended = try custody.waitForEvent { event in
                if case .disconnected(.clientAuthenticationError) = event.kind { return event.sessionName.value == "d2-sub" }
                return false
            }
            #expect(ended.authenticationName.value == "device-2")
            try custody.waitForOutput(containing: "registry reloaded clients=2 disconnected=1", timeout: 10)
            // device-1 is still connected: its subscription still delivers.
            let (status, _, err) = try run("/usr/bin/mosquitto_pub", [
                "-h", "127.0.0.1", "-p", "\(port)", "-i", "d1-pub", "-u", "device-1", "-t", "reload/t", "-m", "still-here",
                "-q", "1", "--cafile", certificates.path("ca.pem"), "--cert", certificates.path("device-1.pem"),
                "--key", certificates.path("device-1.key"),
            ])
            #expect(status == 0, "\(err)")
            try one.waitForOutput(containing: "MESSAGE reload/t still-here")
            #expect(!one.output.contains("DISCONNECT"))
            #expect(try custody.events().allSatisfy { !($0.sessionName.value == "d1-sub" && $0.kind != .connected) })
            // device-2 coming back is refused as disabled.
            let again = try tlsPaho(port: port, id: "d2-again", user: "device-2", certificates: certificates, client: "device-2")
            defer { again.stop() }
            #expect(try connackCode(again) == "135")
            try custody.waitForEvent { $0.sessionName.value == "d2-again" }
            #expect(try rejection(custody, session: "d2-again") == .clientDisabled)

            // A broken file: logged, and the registry in force (device-2 disabled) stays.
            try "clients: [ { authenticationName: device-2, state: Enabled }\n".write(toFile: config, atomically: true, encoding: .utf8)
            kill(custody.process.processIdentifier, SIGHUP)
            try custody.waitForLog("registry reload failed", "reload.yaml")
            let still = try tlsPaho(port: port, id: "d2-still", user: "device-2", certificates: certificates, client: "device-2")
            defer { still.stop() }
            #expect(try connackCode(still) == "135")
            #expect(!one.output.contains("DISCONNECT"))
        }
    }

    /// The TLS flags: over a file's mqtts listener (its certificate replaced by
    /// --tls-certificate), client certificates required and verified against
    /// --tls-trusted-certificate; a bad mode is a usage error naming the flag.
    @Test func tlsFlagsOverrideTheFileAndRequireClientCertificates() async throws {
        try await offPool {
            let config = certificates.path("flags.yaml")
            try """
                listeners:
                  - { protocol: mqtts, address: 127.0.0.1:0, certificate: nowhere.pem, privateKey: server.key }
                """.write(toFile: config, atomically: true, encoding: .utf8)
            let custody = try RunningCustody("tls-flags", arguments: [
                "--config", config, "--tls-certificate", certificates.path("server.pem"),
                "--tls-client-certificates", "required", "--tls-trusted-certificate", certificates.path("ca.pem"),
            ])
            defer { custody.cleanUp() }
            let port = try #require(tlsPorts(custody).first, "\(custody.stdout)")
            let withCertificate = try tlsPaho(port: port, id: "flags-1", user: "device-1", certificates: certificates, client: "device-1")
            defer { withCertificate.stop() }
            #expect(try connackCode(withCertificate) == "0")
            // No client certificate: the handshake fails (TLS 1.2 so the client sees it itself).
            let (status, out, err) = try run("/usr/bin/mosquitto_pub", [
                "-h", "127.0.0.1", "-p", "\(port)", "-i", "flags-2", "-t", "t", "-m", "x", "--tls-version", "tlsv1.2",
                "--cafile", certificates.path("ca.pem"),
            ], timeout: 15)
            #expect(status != 0, "\(out) \(err)")
            #expect(try custody.events().allSatisfy { $0.sessionName.value != "flags-2" })

            let (badStatus, _, badError) = try run(try builtProduct("custody").path, [
                "--listen-tls", "127.0.0.1:0", "--tls-certificate", certificates.path("server.pem"),
                "--tls-private-key", certificates.path("server.key"), "--tls-client-certificates", "sometimes",
            ])
            #expect(badStatus == 64 && badError.contains("--tls-client-certificates 'sometimes'"), "\(badStatus) \(badError)")
            let (keyless, _, keylessError) = try run(try builtProduct("custody").path, ["--listen-tls", "127.0.0.1:0"])
            #expect(keyless == 64 && keylessError.contains("--tls-certificate"), "\(keyless) \(keylessError)")
        }
    }

    /// `custody --check-config`: a good file is summarised (exit 0); a bad one is refused
    /// naming its line and key (exit 1), as is an mqtts listener whose certificate is missing.
    @Test func checkConfigJudgesIdentitySettings() async throws {
        try await offPool {
            let custody = try builtProduct("custody").path
            let good = certificates.path("good.yaml")
            try """
                listeners:
                  - { protocol: mqtt, address: 127.0.0.1:1883 }
                  - { protocol: mqtts, address: 127.0.0.1:8883, certificate: server.pem, privateKey: server.key,
                      clientCertificates: required, trustedCertificates: [ca.pem] }
                namespace:
                  alternativeAuthenticationNameSources: [ClientCertificateSubject, ClientCertificateDns]
                  registeredClientsOnly: true
                clients:
                  - { authenticationName: device-1, attributes: { floor: 3 } }
                  - { authenticationName: device-2, state: Disabled }
                """.write(toFile: good, atomically: true, encoding: .utf8)
            let (status, out, err) = try run(custody, ["--check-config", good])
            #expect(status == 0, "\(out) \(err)")
            #expect(out.contains("mqtts 127.0.0.1:8883") && out.contains("clients 2 (1 disabled)"), "\(out)")

            let bad = certificates.path("bad.yaml")
            try """
                namespace: { registeredClientsOnly: true }
                clients:
                  - { authenticationName: device-1 }
                  - { authenticationName: device-2, validationScheme: SubjectMatchesCommonName }
                """.write(toFile: bad, atomically: true, encoding: .utf8)
            let (badStatus, _, badError) = try run(custody, ["--check-config", bad])
            #expect(badStatus == 1)
            #expect(badError.contains("bad.yaml:4: clients[1].validationScheme:"), "\(badError)")

            let missing = certificates.path("missing.yaml")
            try """
                listeners:
                  - { protocol: mqtts, address: 127.0.0.1:8883, certificate: nowhere.pem, privateKey: server.key }
                """.write(toFile: missing, atomically: true, encoding: .utf8)
            let (missingStatus, _, missingError) = try run(custody, ["--check-config", missing])
            #expect(missingStatus == 1)
            #expect(missingError.contains("nowhere.pem"), "\(missingError)")
        }
    }
}
