import CustodyTesting
import Foundation
import MQTTCodec
import NIOCore
import Testing

/// A window of QoS 1 PUBLISHes to a persistent session: the front hands each to the broker as
/// soon as the one before is decided, so they share the store's commits, and still answers
/// every packet in the order it came (MQTT-4.6.0-2), a SUBSCRIBE among them included; a
/// DISCONNECT right after them waits for their answers' commits, and nothing is lost.
@Suite("Answers in order while PUBLISHes are made durable")
struct PipelinedAnswersTests {
    @Test("90 QoS 1 PUBLISHes (within the Receive Maximum of 100) to an offline persistent session, a SUBSCRIBE and a QoS 0 among them: answered in order, all queued, all delivered on resume")
    func windowOfPublishesToAPersistentSession() async throws {
        try await offPool {
            try withCustody("pipelined", ["--connects-per-second-per-session", "0"]) { custody in
                // The persistent subscriber, then offline.
                let subscriber = try RawClient(port: custody.port)
                #expect(try subscriber.connect("kept", user: "reader", clean: true, expiry: 600).reasonCode == .success)
                try subscriber.send(.subscribe(MQTTSubscribe(
                    packetIdentifier: 1,
                    subscriptions: [MQTTSubscription(topicFilter: "pipe/#", options: MQTTSubscriptionOptions(qos: .atLeastOnce))])))
                guard case .suback = try subscriber.receive() else { throw E2EError.unexpected("no SUBACK") }
                try subscriber.send(.disconnect(MQTTDisconnect(reasonCode: .normalDisconnection)))
                _ = try subscriber.receiveUntilClosed()

                // The publisher sends everything before it reads anything.
                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("writer", user: "writer").reasonCode == .success)
                var sent: [MQTTPacket] = []
                for i in 1...90 {
                    sent.append(.publish(MQTTPublish(
                        topicName: "pipe/\(i % 7)", payload: ByteBuffer(string: "m\(i)"), qos: .atLeastOnce,
                        packetIdentifier: UInt16(i))))
                    if i == 60 {
                        sent.append(.subscribe(MQTTSubscribe(
                            packetIdentifier: 900,
                            subscriptions: [MQTTSubscription(topicFilter: "elsewhere/+", options: MQTTSubscriptionOptions(qos: .atMostOnce))])))
                        sent.append(.publish(MQTTPublish(topicName: "pipe/zero", payload: ByteBuffer(string: "q0"), qos: .atMostOnce)))
                    }
                }
                var bytes = ByteBuffer()
                let encoder = MQTTEncoder(protocolVersion: .mqtt5)
                for packet in sent { try encoder.encode(packet, into: &bytes) }
                try publisher.sendRaw(Array(bytes.readableBytesView))
                var answers: [MQTTPacket] = []
                while answers.count < 91, let packet = try publisher.receive(timeout: 20) { answers.append(packet) }
                let order: [UInt16] = answers.compactMap {
                    switch $0 {
                    case .puback(let ack): ack.packetIdentifier
                    case .suback(let ack): ack.packetIdentifier
                    default: nil
                    }
                }
                let expected = Array(UInt16(1)...60) + [900] + Array(UInt16(61)...90)
                #expect(order == expected, "answers out of order: \(order.prefix(20))…")
                #expect(answers.allSatisfy {
                    if case .puback(let ack) = $0 { return ack.reasonCode == .success }
                    return true
                }, "\(answers.prefix(5))")

                // Five more and a DISCONNECT at once: the close waits for their commits, and
                // they are not lost (no answers: the client has said goodbye).
                var last = ByteBuffer()
                for i in 91...95 {
                    try encoder.encode(.publish(MQTTPublish(
                        topicName: "pipe/last", payload: ByteBuffer(string: "m\(i)"), qos: .atLeastOnce,
                        packetIdentifier: UInt16(i))), into: &last)
                }
                try encoder.encode(.disconnect(MQTTDisconnect(reasonCode: .normalDisconnection)), into: &last)
                try publisher.sendRaw(Array(last.readableBytesView))
                _ = try publisher.receiveUntilClosed(timeout: 20)

                // The session comes back and gets every message, in order.
                let resumed = try RawClient(port: custody.port)
                let ack = try resumed.connect("kept", user: "reader", clean: false, expiry: 600)
                #expect(ack.sessionPresent)
                var got: [String] = []
                while got.filter({ $0 != "q0" }).count < 95 {  // QoS 0 is not queued for an offline session
                    guard let packet = try resumed.receive(timeout: 10) else { break }
                    guard case .publish(let message) = packet else { continue }
                    got.append(String(buffer: message.payload))
                    if let id = message.packetIdentifier { try resumed.send(.puback(MQTTPublishResponse(packetIdentifier: id))) }
                }
                let qos1 = got.filter { $0 != "q0" }
                #expect(qos1 == (1...95).map { "m\($0)" }, "\(qos1.count) of 95, first \(qos1.prefix(5))")
            }
        }
    }
}
