#if os(Linux)
import CustodyModel
import Broker
import CustodyServer
import Foundation
import Glibc
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// MQTT over the epoll transport (RawConnectionIO.swift; the transport's own tests are in
// EpollTransportTests), end to end over 127.0.0.1, next to the NIO channel front that TLS and
// WebSocket listeners use (and plain TCP with `plainTCPFront = .nio`).

/// The epoll transport's read fast path for `E0 00` and `C0 00` (MQTTFraming.swift) gives
/// what the decoder gives, in both versions.
@Suite("MQTT framing")
struct MQTTFramingTests {
    @Test func bodilessPacketsAsTheDecoderReadsThem() throws {
        for version in [MQTTProtocolVersion.mqtt3_1_1, .mqtt5] {
            for bytes: [UInt8] in [[0xE0, 0x00], [0xC0, 0x00]] {
                var buffer = ByteBuffer(bytes: bytes)
                var decoder = MQTTDecoder(protocolVersion: version)
                guard case .packet(let decoded) = decoder.decode(&buffer) else {
                    Issue.record("\(bytes) did not decode")
                    continue
                }
                let fast = bytes.withUnsafeBytes { MQTTFraming.bodilessPacket($0) }
                #expect(fast == decoded)
            }
        }
        for bytes: [UInt8] in [[0xE0, 0x01], [0xE1, 0x00], [0xC0, 0x00, 0xC0], [0x30, 0x00]] {
            #expect(bytes.withUnsafeBytes { MQTTFraming.bodilessPacket($0) } == nil)
        }
    }

    /// A held plain-TCP connection keeps its framing: both directions in 24 bytes.
    @Test func framingFitsIn24Bytes() {
        #expect(MemoryLayout<MQTTFraming>.size <= 24)
    }
}

/// An in-process front with a broker (memory only) and a ledger in a temporary folder.
private final class InProcessFront {
    let directory: String
    let ledger: LMDBSessionLedger
    let broker: Broker
    let front: MQTTFront
    let port: Int

    init(
        _ kind: MQTTFrontConfiguration.PlainTCPFront, host: String = "127.0.0.1", closeGrace: TimeAmount = .seconds(10),
        loops: Int = MQTTFrontConfiguration.defaultEventLoopThreads
    ) async throws {
        directory = scratchDirectory("epoll")
        ledger = try LMDBSessionLedger(directory: directory)
        broker = try Broker(directory: nil)
        var configuration = MQTTFrontConfiguration(listeners: [HostPort(host: host, port: 0)], eventLoopThreads: loops)
        configuration.plainTCPFront = kind
        configuration.closeGrace = closeGrace
        // These tests take sessions over within a second.
        configuration.connectsPerSecondPerSession = 0
        front = MQTTFront(ledger: ledger, pubsub: broker, configuration: configuration)
        do {
            port = try await front.start()[0].port
        } catch {
            await front.shutdown()
            broker.close()
            ledger.close()
            throw error
        }
    }

    func stop() async {
        await front.shutdown()
        broker.close()
        ledger.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func events() throws -> [LedgerEvent] {
        try ledger.records().map(\.event)
    }

    func waitForEvent(timeout: Double = 10, _ match: (LedgerEvent) -> Bool) async throws -> LedgerEvent {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let event = try events().first(where: match) { return event }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw E2EError.timeout("ledger event; have \(try events().map { "\($0.kind) \($0.sessionName)" })")
    }
}

private func encoded(_ packets: [MQTTPacket], _ version: MQTTProtocolVersion = .mqtt5) throws -> [UInt8] {
    var buffer = ByteBuffer()
    for packet in packets { try MQTTEncoder(protocolVersion: version).encode(packet, into: &buffer) }
    return Array(buffer.readableBytesView)
}

private func connectPacket(_ id: String, _ version: MQTTProtocolVersion = .mqtt5) -> MQTTPacket {
    .connect(MQTTConnect(protocolVersion: version, clientIdentifier: id, cleanStart: true, keepAlive: 60, userName: "u"))
}

/// At QoS 1: a client that falls behind gets every QoS 1 message in the end, while QoS 0
/// above the outbound high-water mark is dropped (see OutboundLimitTests).
private func subscribePacket(_ filter: String, id: UInt16 = 1) -> MQTTPacket {
    .subscribe(MQTTSubscribe(
        packetIdentifier: id,
        subscriptions: [MQTTSubscription(topicFilter: filter, options: MQTTSubscriptionOptions(qos: .atLeastOnce))]))
}

/// A client `id` with a 4 KiB receive buffer subscribes to `topics/#` and reads nothing
/// more, while another publishes `payloads` to `topics/0`, `topics/1`, ... at QoS 1. Returns
/// that client (still open) and the identifiers of the PUBACKs, in order.
private func floodAClientThatDoesNotRead(
    port: Int, _ id: String, topics: String, _ payloads: [ByteBuffer]
) throws -> (RawClient, [UInt16]) {
    let reader = try RawClient(port: port, receiveBuffer: 4096)
    _ = try reader.connect(id, user: "u")
    try reader.send(subscribePacket("\(topics)/#"))
    guard case .suback? = try reader.receive(timeout: 10) else { throw E2EError.unexpected("no SUBACK") }
    let publisher = try RawClient(port: port)
    _ = try publisher.connect("\(id)-publisher", user: "u")
    var acknowledged: [UInt16] = []
    for (index, payload) in payloads.enumerated() {
        try publisher.send(.publish(MQTTPublish(
            topicName: "\(topics)/\(index)", payload: payload, qos: .atLeastOnce, packetIdentifier: UInt16(index + 1))))
        guard case .puback(let ack)? = try publisher.receive(timeout: 10) else { throw E2EError.unexpected("no PUBACK") }
        acknowledged.append(ack.packetIdentifier)
    }
    return (reader, acknowledged)
}

/// Runs `body` with a front, stopping it afterwards whatever happens.
private func withFront(
    _ kind: MQTTFrontConfiguration.PlainTCPFront, host: String = "127.0.0.1", closeGrace: TimeAmount = .seconds(10),
    loops: Int = MQTTFrontConfiguration.defaultEventLoopThreads, _ body: (InProcessFront) async throws -> Void
) async throws {
    let front = try await InProcessFront(kind, host: host, closeGrace: closeGrace, loops: loops)
    do {
        try await body(front)
    } catch {
        await front.stop()
        throw error
    }
    await front.stop()
}

@Suite("Plain-TCP front: bare sockets on epoll, and NIO channels", .serialized)
struct PlainTCPFrontTests {
    static let fronts: [MQTTFrontConfiguration.PlainTCPFront] = [.epoll, .nio]

    @Test(arguments: fronts)
    func packetsSplitAcrossReadsAndSeveralInOneRead(_ kind: MQTTFrontConfiguration.PlainTCPFront) async throws {
        try await withFront(kind) { front in
            let port = front.port
            let (connack, kinds, delivered, closedQuietly) = try await offPool {
                let client = try RawClient(port: port)
                // The CONNECT one byte per write: a packet across many reads.
                for byte in try encoded([connectPacket("split")]) {
                    try client.sendRaw([byte])
                    usleep(500)
                }
                // Generous: with the whole suite and builds beside it, the first durable claim of
                // a fresh ledger has taken over 5 s.
                guard case .connack(let connack)? = try client.receive(timeout: 30) else {
                    throw E2EError.unexpected("no CONNACK")
                }
                // SUBSCRIBE, PINGREQ and a PUBLISH to the subscribed topic in one write.
                try client.sendRaw(encoded([
                    subscribePacket("s/#"), .pingreq, .publish(MQTTPublish(topicName: "s/1", payload: ByteBuffer(string: "hello"))),
                ]))
                var kinds: [String] = []
                var delivered: MQTTPublish?
                for _ in 0..<3 {
                    guard let packet = try client.receive(timeout: 10) else { throw E2EError.unexpected("closed after \(kinds)") }
                    kinds.append("\(packet.type)")
                    if case .publish(let publish) = packet { delivered = publish }
                }
                try client.send(.disconnect(MQTTDisconnect()))
                return (connack, kinds, delivered, try client.receiveUntilClosed().isEmpty)
            }
            #expect(connack.reasonCode == .success)
            #expect(kinds.sorted() == ["PINGRESP", "PUBLISH", "SUBACK"])
            #expect(delivered?.payload == ByteBuffer(string: "hello"))
            #expect(delivered?.topicName == "s/1")
            #expect(closedQuietly)
        }
    }

    @Test(arguments: fronts)
    func largeMessagesReachAReaderThatFallsBehind(_ kind: MQTTFrontConfiguration.PlainTCPFront) async throws {
        try await withFront(kind) { front in
            let port = front.port
            // A 4 KiB receive buffer, and nothing read while 9.6 MB are published (more than the
            // sockets buffer): the front keeps what the socket does not take and writes it when
            // it can (EPOLLOUT).
            let payloads = (0..<32).map { index in ByteBuffer(repeating: UInt8(index), count: 300_000) }
            let (acknowledged, received) = try await offPool {
                let (reader, acknowledged) = try floodAClientThatDoesNotRead(port: port, "reader", topics: "big", payloads)
                var received: [MQTTPublish] = []
                for index in payloads.indices {
                    guard case .publish(let message)? = try reader.receive(timeout: 20) else {
                        throw E2EError.unexpected("message \(index) missing")
                    }
                    received.append(message)
                }
                return (acknowledged, received)
            }
            #expect(acknowledged == (1...32).map { UInt16($0) })
            #expect(received.map(\.topicName) == payloads.indices.map { "big/\($0)" })
            #expect(received.map(\.payload) == payloads)
        }
    }

    @Test(arguments: fronts)
    func aMalformedPacketClosesThatConnectionOnly(_ kind: MQTTFrontConfiguration.PlainTCPFront) async throws {
        try await withFront(kind) { front in
            let port = front.port
            let answers = try await offPool {
                let client = try RawClient(port: port)
                _ = try client.connect("malformed", user: "u")
                // PINGREQ with a reserved flag set (MQTT-2.1.3-1): malformed.
                try client.sendRaw([0xC1, 0x00])
                return try client.receiveUntilClosed()
            }
            guard case .disconnect(let disconnect)? = answers.last else { throw E2EError.unexpected("\(answers)") }
            #expect(disconnect.reasonCode == .malformedPacket)
            let event = try await front.waitForEvent {
                if case .disconnected(.clientError) = $0.kind { return $0.sessionName.value == "malformed" }
                return false
            }
            #expect(event.remoteAddress.hasPrefix("127.0.0.1:"))
            // The listener goes on.
            let next = try await offPool { try RawClient(port: port).connect("next", user: "u").reasonCode }
            #expect(next == .success)
        }
    }

    @Test(arguments: fronts)
    func aResetIsALostConnection(_ kind: MQTTFrontConfiguration.PlainTCPFront) async throws {
        try await withFront(kind) { front in
            let port = front.port
            try await offPool {
                let client = try RawClient(port: port)
                _ = try client.connect("reset", user: "u")
                var abort = linger(l_onoff: 1, l_linger: 0)
                _ = setsockopt(client.fd, SOL_SOCKET, SO_LINGER, &abort, socklen_t(MemoryLayout<linger>.size))
                client.drop()
            }
            _ = try await front.waitForEvent {
                if case .disconnected(.connectionLost) = $0.kind { return $0.sessionName.value == "reset" }
                return false
            }
            let deadline = Date().addingTimeInterval(5)
            while front.front.connectionCount > 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(front.front.connectionCount == 0)
        }
    }

    /// A client that stops reading holds unwritten bytes when it is taken over: its socket is
    /// closed after the close grace, and the new connection gets its CONNACK (R4 waits for the
    /// old connection to be gone).
    @Test(arguments: fronts)
    func aTakeoverDoesNotWaitForAClientThatStoppedReading(_ kind: MQTTFrontConfiguration.PlainTCPFront) async throws {
        try await withFront(kind, closeGrace: .milliseconds(300)) { front in
            let port = front.port
            let takeover = try await offPool { () -> MQTTConnAck in
                // 9.6 MB the stuck client never reads: more than its socket takes.
                let payloads = Array(repeating: ByteBuffer(repeating: 7, count: 300_000), count: 32)
                let (stuck, _) = try floodAClientThatDoesNotRead(port: port, "stuck", topics: "flood", payloads)
                // Kept open (not reading) while it is taken over; within RawClient's 5 s the
                // old connection is closed after its 300 ms grace.
                return try withExtendedLifetime(stuck) { try RawClient(port: port).connect("stuck", user: "u") }
            }
            #expect(takeover.reasonCode == .success)
            #expect(takeover.sessionPresent == false)
            _ = try await front.waitForEvent {
                if case .disconnected(.sessionTakenOver) = $0.kind { return $0.sessionName.value == "stuck" }
                return false
            }
        }
    }

    /// Three loops share the listening socket; takeovers hop between them (the old connection
    /// is on whichever loop accepted it).
    @Test func severalLoopsShareTheListenerAndTakeOverAcrossLoops() async throws {
        try await withFront(.epoll, loops: 3) { front in
            let port = front.port
            let (first, second) = try await offPool { () -> ([MQTTConnAck], [MQTTConnAck]) in
                let originals = try (0..<24).map { _ in try RawClient(port: port) }
                let first = try originals.enumerated().map { index, client in
                    // One user name each: the default cap is 10 live sessions per name.
                    try client.connect("loop-\(index)", user: "u\(index)", clean: false, expiry: 600)
                }
                let replacements = try (0..<24).map { _ in try RawClient(port: port) }
                let second = try replacements.enumerated().map { index, client in
                    // One user name each: the default cap is 10 live sessions per name.
                    try client.connect("loop-\(index)", user: "u\(index)", clean: false, expiry: 600)
                }
                // Every original heard 0x8E and was closed.
                for client in originals {
                    let heard = try client.receiveUntilClosed()
                    guard case .disconnect(let disconnect)? = heard.last,
                        disconnect.reasonCode == .sessionTakenOver
                    else { throw E2EError.unexpected("an original connection was not taken over: heard \(heard)") }
                }
                return (first, second)
            }
            #expect(first.allSatisfy { $0.reasonCode == .success && !$0.sessionPresent })
            #expect(second.allSatisfy { $0.reasonCode == .success && $0.sessionPresent })
            let takenOver = try front.events().filter {
                if case .disconnected(.sessionTakenOver) = $0.kind { return true }
                return false
            }
            #expect(takenOver.count == 24)
            // The loops' threads are all there.
            let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap {
                try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8)
            }
            #expect(threads.filter { $0.hasPrefix("custody-mqtt-") }.count >= 3)
        }
    }

    @Test func anIPv6ListenerNamesItsPeersInBrackets() async throws {
        // Without ::1 on this machine there is nothing to test.
        let probe = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        guard probe >= 0 else { return }
        var loopback = sockaddr_in6()
        loopback.sin6_family = sa_family_t(AF_INET6)
        loopback.sin6_addr = in6addr_loopback
        let bound = withUnsafePointer(to: &loopback) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        close(probe)
        guard bound == 0 else { return }
        let front = try await InProcessFront(.epoll, host: "::1")
        let mosquittoPub = "/usr/bin/mosquitto_pub"
        guard FileManager.default.isExecutableFile(atPath: mosquittoPub) else {
            await front.stop()
            throw E2EError.missing("mosquitto_pub (Tools/custody-setup installs it)")
        }
        let port = front.port
        do {
            let status = try await offPool { () throws -> Int32 in
                let process = Process()
                process.executableURL = URL(fileURLWithPath: mosquittoPub)
                process.arguments = ["-h", "::1", "-p", "\(port)", "-i", "six", "-u", "u", "-t", "t", "-m", "m", "-V", "mqttv5"]
                try process.run()
                process.waitUntilExit()
                return process.terminationStatus
            }
            #expect(status == 0)
            let event = try await front.waitForEvent { $0.kind == .connected && $0.sessionName.value == "six" }
            #expect(event.remoteAddress.hasPrefix("[::1]:"))
        } catch {
            await front.stop()
            throw error
        }
        await front.stop()
    }

    @Test func aPortInUseIsRefusedWithItsAddress() async throws {
        try await withFront(.epoll) { first in
            let directory = scratchDirectory("epoll-busy")
            let ledger = try LMDBSessionLedger(directory: directory)
            defer {
                ledger.close()
                try? FileManager.default.removeItem(atPath: directory)
            }
            let front = MQTTFront(
                ledger: ledger, pubsub: nil,
                configuration: MQTTFrontConfiguration(listeners: [HostPort(host: "127.0.0.1", port: first.port)]))
            do {
                _ = try await front.start()
                Issue.record("a second listener on port \(first.port) started")
            } catch let error as ListenError {
                #expect(error.description.contains("127.0.0.1:\(first.port)"))
                #expect(error.description.contains("bind"))
            }
            await front.shutdown()
        }
    }
}
#endif
