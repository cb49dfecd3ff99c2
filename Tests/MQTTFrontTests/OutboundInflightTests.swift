import Foundation
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

/// A v5 subscriber that names no Receive Maximum would allow 65,535 unacknowledged QoS 1
/// messages, all held in the broker's memory; the server sends at most 100 (issue 15,
/// defect 5), and the rest wait in the session's queue.
/// Everything the server sends until it is quiet for a second (or closes).
private func quietAfter(_ client: RawClient) -> [MQTTPacket] {
    var packets: [MQTTPacket] = []
    while let packet = try? client.receive(timeout: 1) { packets.append(packet) }
    return packets
}

@Suite("Outbound in-flight cap")
struct OutboundInflightTests {
    @Test func aClientWithoutReceiveMaximumGetsTheServersCap() {
        var machine = ConnectionStateMachine(settings: .init(maximumOutboundInflight: 100))
        _ = machine.received(
            .packet(.connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "s", cleanStart: true, keepAlive: 60))),
            connection: 1, remoteAddress: "", now: .now())
        let action = machine.claimCompleted(.success(.granted(SessionGrant(
            sequence: 1, connection: 1, sessionPresent: false, expiryInterval: 0, replacedConnection: nil))))
        guard case .accept(let acceptance) = action else {
            Issue.record("\(action)")
            return
        }
        #expect(acceptance.identity.receiveMaximum == 100)
    }

    @Test func aSubscriberThatDoesNotAcknowledgeHoldsAtMostOneHundred() async throws {
        try await offPool {
            try withCustody("inflight") { custody in
                let subscriber = try RawClient(port: custody.port)
                #expect(try subscriber.connect("slow", expiry: 600).reasonCode == .success)
                try subscriber.send(.subscribe(MQTTSubscribe(
                    packetIdentifier: 1,
                    subscriptions: [MQTTSubscription(topicFilter: "load/#", options: MQTTSubscriptionOptions(qos: .atLeastOnce))])))
                guard case .suback = try subscriber.receive() else {
                    Issue.record("no SUBACK")
                    return
                }
                let publisher = try RawClient(port: custody.port)
                #expect(try publisher.connect("fast").reasonCode == .success)
                for id in 1...300 {
                    try publisher.send(.publish(MQTTPublish(
                        topicName: "load/x", payload: ByteBuffer(string: "\(id)"), qos: .atLeastOnce,
                        packetIdentifier: UInt16(id))))
                    _ = try publisher.receive()  // PUBACK
                }
                let received = quietAfter(subscriber).compactMap { packet -> UInt16? in
                    if case .publish(let publish) = packet { return publish.packetIdentifier }
                    return nil
                }
                #expect(received.count == 100)
                // One acknowledgement makes room for one more.
                try subscriber.send(.puback(MQTTPublishResponse(packetIdentifier: received[0])))
                let more = quietAfter(subscriber).filter { if case .publish = $0 { true } else { false } }
                #expect(more.count == 1)
            }
        }
    }
}
