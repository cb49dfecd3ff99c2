import Foundation
import MQTTCodec
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

// MQTT over WebSocket end to end: the real `custody` with `--listen-ws`, paho-mqtt with
// `transport="websockets"` (what browser clients do), curl for refused handshakes, and a raw
// socket for what clients do not do on purpose (packets split across frames, several per frame).

/// The port of custody's WebSocket listener, from its "listening ws HOST:PORT/PATH" line.
private func webSocketPort(_ custody: RunningCustody) throws -> Int {
    guard let line = custody.stdout.split(separator: "\n").first(where: { $0.contains("listening ws 127.0.0.1:") }),
        let range = line.range(of: "127.0.0.1:"),
        let port = Int(line[range.upperBound...].prefix(while: \.isNumber))
    else { throw E2EError.unexpected("no WebSocket listener in:\n\(custody.stdout)") }
    return port
}

private func withWebSocketCustody(_ label: String, _ body: (RunningCustody, Int) throws -> Void) throws {
    try withCustody(label, ["--listen-ws", "127.0.0.1:0"]) { custody in try body(custody, try webSocketPort(custody)) }
}

/// A plain blocking socket to 127.0.0.1 for a hand-made WebSocket session.
private final class RawSocket {
    private var fd: Int32
    private var received: [UInt8] = []

    init(port: Int) throws {
        fd = try connectedSocket(port: port)
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw E2EError.unexpected("send: errno \(errno)") }
            offset += written
        }
    }

    /// Reads until `count` bytes are buffered (or the peer closes); false on close.
    private func fill(_ count: Int, timeout: Double) throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while received.count < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw E2EError.timeout("\(count) bytes from the server, have \(received.count)") }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(left * 1000)) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 4096, 0) }
            if n <= 0 { return false }
            received += chunk[0..<n]
        }
        return true
    }

    /// The HTTP response head (up to the blank line).
    func responseHead(timeout: Double = 5) throws -> String {
        while true {
            if let end = String(decoding: received, as: UTF8.self).range(of: "\r\n\r\n") {
                let text = String(decoding: received, as: UTF8.self)
                let head = String(text[..<end.lowerBound])
                received.removeFirst(head.utf8.count + 4)
                return head
            }
            guard try fill(received.count + 1, timeout: timeout) else { return String(decoding: received, as: UTF8.self) }
        }
    }

    /// The next WebSocket frame from the server (unmasked): opcode and payload; nil on close.
    func frame(timeout: Double = 5) throws -> (opcode: UInt8, payload: [UInt8])? {
        guard try fill(2, timeout: timeout) else { return nil }
        var length = Int(received[1] & 0x7F)
        var header = 2
        if length == 126 {
            guard try fill(4, timeout: timeout) else { return nil }
            length = Int(received[2]) << 8 | Int(received[3])
            header = 4
        } else if length == 127 {
            guard try fill(10, timeout: timeout) else { return nil }
            length = received[2..<10].reduce(0) { $0 << 8 | Int($1) }
            header = 10
        }
        guard try fill(header + length, timeout: timeout) else { return nil }
        let opcode = received[0] & 0x0F
        let payload = Array(received[header..<header + length])
        received.removeFirst(header + length)
        return (opcode, payload)
    }

    /// True when the server closes the connection within `timeout`.
    func closesWithin(_ timeout: Double) throws -> Bool {
        received.removeAll()
        return try !fill(1, timeout: timeout)
    }
}

/// A masked client frame (RFC 6455 5.3: clients mask everything they send).
private func clientFrame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true) -> [UInt8] {
    var frame: [UInt8] = [(fin ? 0x80 : 0) | opcode]
    let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
    if payload.count < 126 {
        frame.append(0x80 | UInt8(payload.count))
    } else {
        frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
    }
    frame += mask
    frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    return frame
}

private func mqttBytes(_ packet: MQTTPacket, _ version: MQTTProtocolVersion = .mqtt5) throws -> [UInt8] {
    var buffer = ByteBuffer()
    try MQTTEncoder(protocolVersion: version).encode(packet, into: &buffer)
    return Array(buffer.readableBytesView)
}

private func upgradeRequest(path: String = "/mqtt", protocols: String? = "mqtt") -> [UInt8] {
    var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    if let protocols { request += "Sec-WebSocket-Protocol: \(protocols)\r\n" }
    return Array((request + "\r\n").utf8)
}

@Suite("MQTT over WebSocket end to end", .serialized)
struct WebSocketEndToEndTests {
    /// paho-mqtt over WebSocket (path /mqtt), v5 and v3.1.1: subscribe and publish at QoS 1,
    /// across transports both ways (a TCP mosquitto_pub reaches a WebSocket subscriber too).
    @Test func pahoOverWebSocketPublishesAndSubscribes() async throws {
        try await offPool {
            try withWebSocketCustody("ws-paho") { custody, wsPort in
                let v5 = try flowClient([
                    "--port", "\(wsPort)", "--id", "ws-sub-5", "--transport", "websockets", "--subscribe", "room/#",
                ])
                defer { v5.stop() }
                let v3 = try flowClient([
                    "--port", "\(wsPort)", "--id", "ws-sub-3", "--v3", "--transport", "websockets", "--subscribe", "room/#",
                ])
                defer { v3.stop() }
                try v5.waitForOutput(containing: "SUBACK 1")
                try v3.waitForOutput(containing: "SUBACK 1")
                #expect(try custody.waitForLog("granted", "ws-sub-5").contains("127.0.0.1:"))
                let publisher = try flowClient([
                    "--port", "\(wsPort)", "--id", "ws-pub", "--transport", "websockets", "--scenario", "publish",
                    "--topic", "room/light", "--message", "on",
                ])
                defer { publisher.stop() }
                try publisher.waitForOutput(containing: "PUBACK 1 rc=0")
                for subscriber in [v5, v3] { try subscriber.waitForOutput(containing: "MESSAGE room/light 2 on qos=1") }
                // From TCP to WebSocket, a packet larger than a typical frame (20 KB).
                let big = String(repeating: "z", count: 20_000)
                let (status, _, error) = try run("/usr/bin/mosquitto_pub", [
                    "-p", "\(custody.port)", "-h", "127.0.0.1", "-V", "mqttv5", "-i", "tcp-pub", "-u", "dev", "-t", "room/big",
                    "-m", big, "-q", "1",
                ])
                #expect(status == 0, "\(error)")
                for subscriber in [v5, v3] {
                    try subscriber.waitForOutput(containing: "MESSAGE room/big 20000 zzzzzzzzzzzzzzzz qos=1")
                }
                #expect(!v5.output.contains("DISCONNECT") && !v3.output.contains("DISCONNECT"))
                let connected = try custody.events().filter { $0.kind == .connected }.map(\.sessionName.value)
                #expect(Set(connected).isSuperset(of: ["ws-sub-5", "ws-sub-3", "ws-pub"]))
            }
        }
    }

    /// Refused handshakes, with curl: another path is 404, a subprotocol list without mqtt is
    /// 400, a plain GET on the path is 426; each logged. With mqtt offered: 101 naming mqtt.
    /// (curl waits after a 101 until --max-time: this test takes a few seconds.)
    @Test func handshakesOutsideTheRulesAreRefused() async throws {
        try await offPool {
            try withWebSocketCustody("ws-refuse") { custody, wsPort in
                func curl(_ path: String, _ headers: [String]) throws -> String {
                    let arguments = ["-si", "--max-time", "3", "http://127.0.0.1:\(wsPort)\(path)"] + headers.flatMap { ["-H", $0] }
                    return try run("/usr/bin/curl", arguments, timeout: 10).1
                }
                let upgrade = [
                    "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                ]
                let wrongPath = try curl("/other", upgrade + ["Sec-WebSocket-Protocol: mqtt"])
                #expect(wrongPath.hasPrefix("HTTP/1.1 404 Not Found"), "\(wrongPath)")
                #expect(wrongPath.contains("use /mqtt"))
                let wrongProtocol = try curl("/mqtt", upgrade + ["Sec-WebSocket-Protocol: chat, superchat"])
                #expect(wrongProtocol.hasPrefix("HTTP/1.1 400 Bad Request"), "\(wrongProtocol)")
                #expect(wrongProtocol.contains("subprotocol mqtt required"))
                let plain = try curl("/mqtt", [])
                #expect(plain.hasPrefix("HTTP/1.1 426 Upgrade Required"), "\(plain)")
                try custody.waitForLog("refused WebSocket", "path=/other", "status=404")
                try custody.waitForLog("refused WebSocket", "status=400")
                // curl waits after a 101 until --max-time; the head is what counts.
                let accepted = try curl("/mqtt", upgrade + ["Sec-WebSocket-Protocol: chat, mqtt"])
                #expect(accepted.hasPrefix("HTTP/1.1 101 Switching Protocols"), "\(accepted)")
                #expect(accepted.lowercased().contains("sec-websocket-protocol: mqtt"), "\(accepted)")
                #expect(accepted.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "\(accepted)")
                // MQTT 3.1's old name is served too, as mosquitto does.
                let legacy = try curl("/mqtt", upgrade + ["Sec-WebSocket-Protocol: mqttv3.1"])
                #expect(legacy.hasPrefix("HTTP/1.1 101 Switching Protocols"), "\(legacy)")
                #expect(legacy.lowercased().contains("sec-websocket-protocol: mqttv3.1"), "\(legacy)")
                #expect(try custody.events().isEmpty)
            }
        }
    }

    /// By hand: one CONNECT split over two frames (the first a fragment), two PINGREQs in one
    /// frame, a WebSocket ping, then a close; the server answers each in kind.
    @Test func mqttStreamIsIndependentOfFrames() async throws {
        try await offPool {
            try withWebSocketCustody("ws-frames") { custody, wsPort in
                let socket = try RawSocket(port: wsPort)
                try socket.send(upgradeRequest(protocols: nil))  // no subprotocol offered: accepted without one
                let head = try socket.responseHead()
                #expect(head.hasPrefix("HTTP/1.1 101"), "\(head)")
                #expect(!head.lowercased().contains("sec-websocket-protocol"), "\(head)")
                let connect = try mqttBytes(.connect(MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "frames", keepAlive: 60, userName: "dev")))
                try socket.send(clientFrame(0x2, Array(connect[..<5]), fin: false) + clientFrame(0x0, Array(connect[5...])))
                guard let connack = try socket.frame() else { throw E2EError.unexpected("closed instead of CONNACK") }
                #expect(connack.opcode == 0x2)
                var decoder = MQTTDecoder(protocolVersion: .mqtt5)
                var buffer = ByteBuffer(bytes: connack.payload)
                guard case .packet(.connack(let answer)) = decoder.decode(&buffer) else { throw E2EError.unexpected("\(connack)") }
                #expect(answer.reasonCode == .success)
                let ping = try mqttBytes(.pingreq)
                try socket.send(clientFrame(0x2, ping + ping))
                var pongs = 0
                while pongs < 2, let frame = try socket.frame() {
                    var bytes = ByteBuffer(bytes: frame.payload)
                    while case .packet(.pingresp) = decoder.decode(&bytes) { pongs += 1 }
                }
                #expect(pongs == 2)
                try socket.send(clientFrame(0x9, Array("hello".utf8)))
                let pong = try socket.frame()
                #expect(pong?.opcode == 0xA && pong?.payload == Array("hello".utf8))
                try socket.send(clientFrame(0x8, [0x03, 0xE8]))  // close, 1000
                let close = try socket.frame()
                #expect(close?.opcode == 0x8 && close?.payload == [0x03, 0xE8])
                #expect(try socket.closesWithin(5))
                let ended = try custody.waitForEvent { $0.sessionName.value == "frames" && $0.kind != .connected }
                #expect(ended.kind == .disconnected(.connectionLost))
            }
        }
    }

    /// A connection that never sends its HTTP request is closed after --connect-timeout-seconds.
    @Test func silentConnectionIsClosedInTime() async throws {
        try await offPool {
            let custody = try RunningCustody("ws-silent", arguments: ["--listen-ws", "127.0.0.1:0", "--connect-timeout-seconds", "1"])
            defer { custody.cleanUp() }
            let socket = try RawSocket(port: try webSocketPort(custody))
            let start = Date()
            #expect(try socket.closesWithin(10))
            #expect(Date().timeIntervalSince(start) >= 0.9)
            try custody.waitForLog("no WebSocket upgrade in time")
        }
    }

    @Test func badListenWSFlagIsRefused() async throws {
        try await offPool {
            for value in ["127.0.0.1:99999", "no spaces:1", ""] {
                let (status, _, error) = try run(try builtProduct("custody").path, [
                    "--data-dir", scratchDirectory("bad-ws"), "--listen", "127.0.0.1:0", "--listen-ws", value,
                ])
                #expect(status != 0)
                #expect(error.contains("--listen-ws"), "\(error)")
            }
        }
    }

    /// A text frame is not MQTT (MQTT-6.0.0-1): close 1003, then the connection ends.
    @Test func textFrameClosesTheConnection() async throws {
        try await offPool {
            try withWebSocketCustody("ws-text") { custody, wsPort in
                let socket = try RawSocket(port: wsPort)
                try socket.send(upgradeRequest())
                let head = try socket.responseHead()
                #expect(head.hasPrefix("HTTP/1.1 101"), "\(head)")
                #expect(head.lowercased().contains("sec-websocket-protocol: mqtt"), "\(head)")
                try socket.send(clientFrame(0x1, Array("CONNECT".utf8)))
                let close = try socket.frame()
                #expect(close?.opcode == 0x8 && close?.payload == [0x03, 0xEB])  // 1003
                #expect(try socket.closesWithin(5))
                try custody.waitForLog("closed WebSocket", "text frame")
            }
        }
    }

    /// The MQTT side closing (a protocol error) sends its DISCONNECT, then a close frame.
    @Test func mqttCloseEndsWithACloseFrame() async throws {
        try await offPool {
            try withWebSocketCustody("ws-mqtt-close") { custody, wsPort in
                let socket = try RawSocket(port: wsPort)
                try socket.send(upgradeRequest())
                _ = try socket.responseHead()
                try socket.send(clientFrame(0x2, try mqttBytes(.connect(MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "twice", keepAlive: 60, userName: "dev")))))
                #expect(try socket.frame()?.opcode == 0x2)  // CONNACK
                try socket.send(clientFrame(0x2, try mqttBytes(.connect(MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "twice", keepAlive: 60, userName: "dev")))))
                let disconnect = try socket.frame()
                #expect(disconnect?.payload == (try mqttBytes(.disconnect(MQTTDisconnect(reasonCode: .protocolError)))))
                #expect(try socket.frame()?.opcode == 0x8)
                #expect(try socket.closesWithin(5))
            }
        }
    }
}
