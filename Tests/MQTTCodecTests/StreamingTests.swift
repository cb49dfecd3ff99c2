import MQTTCodec
import NIOCore
import Testing

// The decoder as a ByteToMessageDecoder uses it: bytes arrive in pieces, several packets
// share a read, and partial data stays in the buffer.

@Suite struct StreamingTests {
    /// Every prefix of a packet is "need more data"; the last byte completes it.
    @Test(arguments: [0, 3, 5, 14, 25])
    func byteByByte(sampleIndex: Int) throws {
        let packet = version5Samples[sampleIndex]
        let wire = try encode(packet, .mqtt5)
        let version: MQTTProtocolVersion? = packet.type == .connect ? nil : .mqtt5
        var stream = ByteBuffer()
        for (index, byte) in wire.enumerated() {
            stream.writeInteger(byte)
            let result = MQTTDecoder.decode(&stream, protocolVersion: version, maximumPacketSize: .max)
            if index < wire.count - 1 {
                #expect(result == .needMoreData, "after \(index + 1) of \(wire.count) bytes")
                #expect(stream.readableBytes == index + 1)
            } else {
                #expect(result == .packet(packet))
                #expect(stream.readableBytes == 0)
            }
        }
    }

    @Test func largePacketByteByByteHeader() throws {
        // A 3-byte remaining length split across reads, then the body in two pieces.
        let packet = MQTTPacket.publish(MQTTPublish(topicName: "t", payload: ByteBuffer(repeating: 7, count: 20_000)))
        let wire = try encode(packet, .mqtt3_1_1)
        var stream = ByteBuffer()
        for cut in [1, 2, 3, 4, 10_000] {
            stream.writeBytes(wire[stream.writerIndex..<cut])
            #expect(MQTTDecoder.decode(&stream, protocolVersion: .mqtt3_1_1, maximumPacketSize: .max) == .needMoreData)
        }
        stream.writeBytes(wire[stream.writerIndex...])
        #expect(MQTTDecoder.decode(&stream, protocolVersion: .mqtt3_1_1, maximumPacketSize: .max) == .packet(packet))
    }

    @Test func severalPacketsInOneRead() throws {
        let packets: [MQTTPacket] = [
            .connect(MQTTConnect(protocolVersion: .mqtt3_1_1, clientIdentifier: "c")),
            .subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "a/#")])),
            .publish(MQTTPublish(topicName: "a/b", payload: buffer("x"), qos: .atLeastOnce, packetIdentifier: 2)),
            .pingreq,
            .disconnect(MQTTDisconnect()),
        ]
        var stream = ByteBuffer()
        let encoder = MQTTEncoder(protocolVersion: .mqtt3_1_1)
        for packet in packets { try encoder.encode(packet, into: &stream) }
        // Half of another packet after them.
        let tail = Array(try encode(.puback(MQTTPublishResponse(packetIdentifier: 2)), .mqtt3_1_1).prefix(3))
        stream.writeBytes(tail)

        // The stateful decoder learns the version from CONNECT: the DISCONNECT with no body
        // is then 3.1.1's, and AUTH would be refused.
        var decoder = MQTTDecoder()
        for packet in packets {
            #expect(decoder.decode(&stream) == .packet(packet))
        }
        #expect(decoder.protocolVersion == .mqtt3_1_1)
        #expect(decoder.decode(&stream) == .needMoreData)
        #expect(bytes(stream) == tail)
    }

    @Test func decoderLimitsAndVersion() {
        var decoder = MQTTDecoder(protocolVersion: .mqtt5, maximumPacketSize: 10)
        var stream = ByteBuffer(bytes: [0x30, 0x20])
        guard case .failure(let error) = decoder.decode(&stream) else {
            Issue.record("oversized packet accepted")
            return
        }
        #expect(error.reasonCode == .packetTooLarge)
        #expect(error.protocolVersion == .mqtt5)
        #expect(error.description == "PUBLISH: Packet too large: packet of 34 bytes exceeds the maximum of 10")
        #expect(stream.readableBytes == 2)

        var fresh = MQTTDecoder()
        var auth = ByteBuffer(bytes: [0xF0, 0x00])
        #expect(fresh.decode(&auth) == .failure(MQTTDecodingError(.expectedConnect(.auth), packetType: .auth, protocolVersion: nil)))
        #expect(fresh.protocolVersion == nil)
    }

    /// A failure consumes nothing: the reader index stays at the bad packet.
    @Test func failureConsumesNothing() throws {
        var stream = ByteBuffer()
        try MQTTEncoder(protocolVersion: .mqtt5).encode(.pingreq, into: &stream)
        stream.writeBytes([0x36, 0x00])
        #expect(MQTTDecoder.decode(&stream, protocolVersion: .mqtt5, maximumPacketSize: .max) == .packet(.pingreq))
        let index = stream.readerIndex
        guard case .failure = MQTTDecoder.decode(&stream, protocolVersion: .mqtt5, maximumPacketSize: .max) else {
            Issue.record("QoS 3 accepted")
            return
        }
        #expect(stream.readerIndex == index)
    }
}
