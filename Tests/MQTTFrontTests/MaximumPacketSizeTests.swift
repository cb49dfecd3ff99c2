import MQTTCodec
import NIOCore
import Testing

/// The largest packet a client may send (`limits.maxPacketBytes`, default 512 KiB): announced
/// in the v5 CONNACK; a packet of exactly that size is taken, one byte more closes the
/// connection (v5 DISCONNECT 0x95, ledger `disconnected(clientError)`; v3.1.1: closed).
@Suite("Maximum packet size")
struct MaximumPacketSizeTests {
    /// A QoS 1 PUBLISH to `t` whose whole packet is `size` bytes.
    private func publish(totalSize size: Int) -> MQTTPacket {
        // Fixed header 1 + 2 (remaining length below 16,384), topic 2 + 1, identifier 2,
        // properties length 1 (v5), payload the rest.
        .publish(MQTTPublish(
            topicName: "t", payload: ByteBuffer(repeating: 0x70, count: size - 9), qos: .atLeastOnce,
            packetIdentifier: 1))
    }

    @Test func atTheLimitTakenOneByteMoreRefused() async throws {
        try await offPool {
            try withCustody("max-packet", ["--max-packet-bytes", "2048"]) { custody in
                let client = try RawClient(port: custody.port)
                let connack = try client.connect("at-limit")
                #expect(connack.properties.maximumPacketSize == UInt32(2048))
                var encoded = ByteBuffer()
                _ = try MQTTEncoder(protocolVersion: .mqtt5).encode(publish(totalSize: 2048), into: &encoded)
                #expect(encoded.readableBytes == 2048)
                try client.send(publish(totalSize: 2048))
                guard case .puback? = try client.receive() else { throw E2EError.unexpected("no PUBACK at the limit") }
                try client.send(publish(totalSize: 2049))
                #expect(try client.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
                let end = try custody.waitForEvent { $0.sessionName.value == "at-limit" && $0.kind != .connected }
                #expect(end.kind == .disconnected(.clientError))

                let v3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                _ = try v3.connect("v3-over", version: .mqtt3_1_1)
                var big = ByteBuffer()
                _ = try MQTTEncoder(protocolVersion: .mqtt3_1_1).encode(.publish(MQTTPublish(
                    topicName: "t", payload: ByteBuffer(repeating: 0x70, count: 4096))), into: &big)
                try v3.sendRaw(Array(big.readableBytesView))
                #expect(try v3.receiveUntilClosed().isEmpty)
            }
        }
    }

    @Test func theDefaultIs512KiB() async throws {
        try await offPool {
            try withCustody("max-packet-default") { custody in
                let connack = try RawClient(port: custody.port).connect("default")
                #expect(connack.properties.maximumPacketSize == UInt32(512 * 1024))
            }
        }
    }
}
