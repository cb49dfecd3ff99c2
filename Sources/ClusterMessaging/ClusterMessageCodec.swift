// A message between nodes: the MQTT 5.0 PUBLISH packet itself as the NATS payload, so that
// every property (user properties, content type, expiry, response topic...) travels with it
// through the codec the fronts already use, and nothing of a second format is written here.
//
// Two versions of the payload of a message on the stream:
// - version 1 (what nodes wrote before issue 19's batching, and what QoS 0, retained messages
//   and wills still carry): exactly one PUBLISH packet;
// - version 2 (QoS 1/2 on the message stream, `ReliableBatcher`): one or more PUBLISH packets
//   back to back, each delimited by its own remaining length, all of one topic, in the order
//   they were published. A version 1 payload is a version 2 payload of one packet, so a node
//   reads both (messages already in a stream, and nodes not yet upgraded) with `decodeBatch`.
import MQTTCodec
import NIOCore

enum ClusterMessageCodec {
    static func encode(_ publish: MQTTPublish) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: publish.payload.readableBytes + publish.topicName.utf8.count + 16)
        try encode(publish, into: &buffer)
        return buffer
    }

    /// Appends `publish` as one PUBLISH packet (to a batch: version 2).
    static func encode(_ publish: MQTTPublish, into buffer: inout ByteBuffer) throws {
        var packet = publish
        // A PUBLISH of QoS 1/2 needs an identifier on the wire; the receiving broker gives its own.
        packet.packetIdentifier = packet.qos == .atMostOnce ? nil : 1
        packet.duplicate = false
        _ = try MQTTEncoder(protocolVersion: .mqtt5).encode(.publish(packet), into: &buffer)
    }

    /// nil when the payload is not one PUBLISH packet (version 1).
    static func decode(_ payload: ByteBuffer) -> MQTTPublish? {
        guard let publishes = decodeBatch(payload), publishes.count == 1 else { return nil }
        return publishes[0]
    }

    /// Without decoding the packets: the topic of a payload of either version (its first
    /// packet's; a batch is all of one topic) and whether any of its packets is retained. Nil
    /// when it does not read as PUBLISH packets (`decodeBatch` then says more).
    static func outline(_ payload: ByteBuffer) -> (topic: String, retained: Bool)? {
        var buffer = payload
        var topic: String?
        var retained = false
        while buffer.readableBytes > 0 {
            guard let first = buffer.readInteger(as: UInt8.self), first >> 4 == 3 else { return nil }
            if first & 1 == 1 { retained = true }
            var length = 0
            var shift = 0
            while true {
                guard shift < 28, let byte = buffer.readInteger(as: UInt8.self) else { return nil }
                length |= Int(byte & 0x7F) << shift
                if byte & 0x80 == 0 { break }
                shift += 7
            }
            guard length <= buffer.readableBytes else { return nil }
            if topic == nil {
                guard length >= 2, let size = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
                    Int(size) + 2 <= length,
                    let name = buffer.getString(at: buffer.readerIndex + 2, length: Int(size))
                else { return nil }
                topic = name
            }
            buffer.moveReaderIndex(forwardBy: length)
        }
        return topic.map { ($0, retained) }
    }

    /// The PUBLISH packets of a payload of either version, in order; nil when it is not one or
    /// more whole PUBLISH packets (nothing of a damaged batch is taken).
    static func decodeBatch(_ payload: ByteBuffer) -> [MQTTPublish]? {
        var buffer = payload
        var publishes: [MQTTPublish] = []
        while buffer.readableBytes > 0 {
            guard case .packet(.publish(let publish)) = MQTTDecoder.decode(
                &buffer, protocolVersion: .mqtt5, maximumPacketSize: MQTTDecoder.largestPacketSize)
            else { return nil }
            publishes.append(publish)
        }
        return publishes.isEmpty ? nil : publishes
    }
}
