import CustodyTesting
import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// A sink that keeps what the broker sends: what a connection would write to its socket.
final class RecordingSink: BrokerSink, @unchecked Sendable {
    private let lock = NSLock()
    private var packets: [MQTTPacket] = []

    func send(_ packets: [MQTTPacket]) {
        lock.lock()
        self.packets.append(contentsOf: packets)
        lock.unlock()
    }

    /// Everything received so far, which is then forgotten.
    func take() -> [MQTTPacket] {
        lock.lock()
        defer { lock.unlock() }
        let taken = packets
        packets = []
        return taken
    }

    func takePublishes() -> [MQTTPublish] {
        take().compactMap { if case .publish(let p) = $0 { p } else { nil } }
    }
}

func scratchDirectory() -> String { CustodyTesting.scratchDirectory("broker") }

func removeDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

func name(_ text: String) -> SessionName { SessionName(unchecked: text) }

func payload(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

func text(_ publish: MQTTPublish) -> String { String(buffer: publish.payload) }

func publish(
    _ topic: String, _ body: String, qos: MQTTQoS = .atMostOnce, id: UInt16? = nil, retain: Bool = false,
    properties: MQTTProperties = []
) -> MQTTPacket {
    .publish(MQTTPublish(
        topicName: topic, payload: payload(body), qos: qos, retain: retain,
        packetIdentifier: qos == .atMostOnce ? nil : (id ?? 1), properties: properties))
}

func subscribe(
    _ filters: [(String, MQTTQoS)], id: UInt16 = 1, noLocal: Bool = false, identifier: UInt32? = nil
) -> MQTTPacket {
    .subscribe(MQTTSubscribe(
        packetIdentifier: id,
        subscriptions: filters.map {
            MQTTSubscription(topicFilter: $0.0, options: MQTTSubscriptionOptions(qos: $0.1, noLocal: noLocal))
        },
        properties: identifier.map { [.subscriptionIdentifier($0)] } ?? []))
}

func ack(_ id: UInt16, _ code: MQTTReasonCode = .success) -> MQTTPublishResponse {
    MQTTPublishResponse(packetIdentifier: id, reasonCode: code)
}


/// A connected client: its session and what it received.
struct Client {
    let session: BrokerSession
    let sink: RecordingSink
}

extension Broker {
    func connect(
        _ session: String, persistent: Bool = false, present: Bool = false, version: MQTTProtocolVersion = .mqtt5,
        receiveMaximum: Int = 65535
    ) -> Client {
        let sink = RecordingSink()
        let s = attach(
            session: name(session), persistent: persistent, sessionPresent: present, protocolVersion: version,
            receiveMaximum: receiveMaximum, sink: sink)
        return Client(session: s, sink: sink)
    }
}

/// An observer that keeps what the broker told it about its limits.
final class RecordingObserver: BrokerObserver, @unchecked Sendable {
    private let lock = NSLock()
    private var limits: [(BrokerLimit, SessionName, Int)] = []
    private var overflows: [SessionName] = []

    func limitExceeded(_ limit: BrokerLimit, session: SessionName, count: Int) {
        lock.lock()
        limits.append((limit, session, count))
        lock.unlock()
    }

    func queueOverflowed(_ session: SessionName) {
        lock.lock()
        overflows.append(session)
        lock.unlock()
    }

    /// How many times `limit` was exceeded, by `session` when given.
    func count(_ limit: BrokerLimit, _ session: String? = nil) -> Int {
        lock.lock()
        defer { lock.unlock() }
        return limits.filter { $0.0 == limit && (session == nil || $0.1.value == session) }.reduce(0) { $0 + $1.2 }
    }

    var overflowed: [String] {
        lock.lock()
        defer { lock.unlock() }
        return overflows.map(\.value)
    }
}

func subscribeCodes(_ answers: [MQTTPacket]) -> [MQTTReasonCode] {
    answers.compactMap { if case .suback(let suback) = $0 { suback.reasonCodes } else { nil } }.flatMap { $0 }
}
