// A message between nodes: the MQTT 5.0 PUBLISH packet itself as the NATS payload, so that
// every property (user properties, content type, expiry, response topic...) travels with it
// through the codec the fronts already use, and nothing of a second format is written here.
import MQTTCodec
import NIOCore

enum ClusterMessageCodec {
    static func encode(_ publish: MQTTPublish) throws -> ByteBuffer {
        var packet = publish
        // A PUBLISH of QoS 1/2 needs an identifier on the wire; the receiving broker gives its own.
        packet.packetIdentifier = packet.qos == .atMostOnce ? nil : 1
        packet.duplicate = false
        var buffer = ByteBufferAllocator().buffer(capacity: publish.payload.readableBytes + publish.topicName.utf8.count + 16)
        _ = try MQTTEncoder(protocolVersion: .mqtt5).encode(.publish(packet), into: &buffer)
        return buffer
    }

    /// nil when the payload is not one PUBLISH packet.
    static func decode(_ payload: ByteBuffer) -> MQTTPublish? {
        var buffer = payload
        guard case .packet(.publish(let publish)) = MQTTDecoder.decode(
            &buffer, protocolVersion: .mqtt5, maximumPacketSize: MQTTDecoder.largestPacketSize),
            buffer.readableBytes == 0
        else { return nil }
        return publish
    }
}
