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
