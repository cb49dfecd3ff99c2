import LMDBStorage
import MQTTCodec
import NIOCore

/// What a routed message's outbox record holds: not its CloudEvent's JSON but what that JSON
/// is made from, the MQTT PUBLISH as MQTT 5 encodes it and the event's own attributes
/// (source, id, who published, the route's extensions). The JSON is made when the event is
/// sent (`json(of:)`), on the route's task: the broker's lock and the store's writer do less
/// (about a third of the bytes written for a 64-byte payload), and every attempt still sends
/// the same event, `time` being the record's `acceptedAt`. Lifecycle events, and records
/// written before, hold the JSON itself (it begins with `{`).
///
/// Layout: 0x01; `source`, `id`, the authentication name, the session name (each a u16
/// length, big endian, then UTF-8; 0xFFFF: absent); a u8 count of extension attributes, each
/// a name and a value as above; then the PUBLISH (MQTT 5 encoding, packet identifier 1 when
/// QoS > 0). A message without properties (most) is kept plainer, with no MQTT encoding to
/// write and decode: 0x02; the same strings and attributes; a flags byte (bits 0-1 the QoS,
/// bit 2 retain); the topic as the strings are; then the payload, to the end.
public enum StoredEvent {
    static let compactMarker: UInt8 = 0x01
    static let plainMarker: UInt8 = 0x02
    private static let absent: UInt16 = 0xFFFF

    /// The record bytes of a message's event; nil when the PUBLISH cannot be encoded.
    static func compact(
        _ publish: MQTTPublish, id: String, source: String, authenticationName: String?, sessionName: String?,
        extensions: CloudEvents.Extensions
    ) -> [UInt8]? {
        var buffer = ByteBufferAllocator().buffer(capacity: 64 + publish.topicName.utf8.count + publish.payload.readableBytes)
        let plain = publish.properties.isEmpty && publish.topicName.utf8.count < Int(absent)
        buffer.writeInteger(plain ? plainMarker : compactMarker)
        for text in [source, id, authenticationName, sessionName] { write(text, into: &buffer) }
        let attributes = extensions.attributes.prefix(255)
        buffer.writeInteger(UInt8(attributes.count))
        for (name, value) in attributes {
            write(name, into: &buffer)
            write(value, into: &buffer)
        }
        if plain {
            buffer.writeInteger(publish.qos.rawValue | (publish.retain ? 0x04 : 0))
            write(publish.topicName, into: &buffer)
            var payload = publish.payload
            buffer.writeBuffer(&payload)
            return Array(buffer.readableBytesView)
        }
        var stored = publish
        stored.duplicate = false
        stored.packetIdentifier = stored.qos == .atMostOnce ? nil : 1
        do {
            _ = try MQTTEncoder(protocolVersion: .mqtt5).encode(.publish(stored), into: &buffer)
        } catch {
            return nil
        }
        return Array(buffer.readableBytesView)
    }

    /// The CloudEvent's JSON of a record: as kept, or made from its compact form.
    public static func json(of record: OutboxRecord) -> [UInt8] {
        guard let marker = record.event.first, marker == compactMarker || marker == plainMarker,
            let parts = decode(record.event)
        else { return record.event }
        return CloudEvents.published(
            parts.publish, id: parts.id, source: parts.source, time: record.acceptedAt,
            authenticationName: parts.authenticationName, sessionName: parts.sessionName,
            extensions: CloudEvents.Extensions(parts.extensions))
    }

    /// The record with its event as JSON (what is sent and dead-lettered).
    static func rendered(_ record: OutboxRecord) -> OutboxRecord {
        guard record.event.first == compactMarker || record.event.first == plainMarker else { return record }
        var copy = record
        copy.event = json(of: record)
        return copy
    }

    private struct Parts {
        var source: String
        var id: String
        var authenticationName: String?
        var sessionName: String?
        var extensions: [(name: String, value: String)]
        var publish: MQTTPublish
    }

    private static func decode(_ bytes: [UInt8]) -> Parts? {
        var buffer = ByteBuffer(bytes: bytes)
        guard let marker = buffer.readInteger(as: UInt8.self), marker == compactMarker || marker == plainMarker,
            let source = read(&buffer) ?? nil, let id = read(&buffer) ?? nil,
            let authenticationName = read(&buffer), let sessionName = read(&buffer),
            let count = buffer.readInteger(as: UInt8.self)
        else { return nil }
        var extensions: [(name: String, value: String)] = []
        for _ in 0..<count {
            guard let name = read(&buffer) ?? nil, let value = read(&buffer) ?? nil else { return nil }
            extensions.append((name, value))
        }
        if marker == plainMarker {
            guard let flags = buffer.readInteger(as: UInt8.self), let qos = MQTTQoS(rawValue: flags & 0x03),
                let topic = read(&buffer) ?? nil
            else { return nil }
            let publish = MQTTPublish(topicName: topic, payload: buffer, qos: qos, retain: flags & 0x04 != 0)
            return Parts(
                source: source, id: id, authenticationName: authenticationName, sessionName: sessionName,
                extensions: extensions, publish: publish)
        }
        guard case .packet(.publish(var publish)) = MQTTDecoder.decode(
            &buffer, protocolVersion: .mqtt5, maximumPacketSize: MQTTDecoder.largestPacketSize)
        else { return nil }
        publish.packetIdentifier = nil
        return Parts(
            source: source, id: id, authenticationName: authenticationName, sessionName: sessionName,
            extensions: extensions, publish: publish)
    }

    private static func write(_ text: String?, into buffer: inout ByteBuffer) {
        guard let text else {
            buffer.writeInteger(absent)
            return
        }
        let count = text.utf8.count
        if count < Int(absent) {
            buffer.writeInteger(UInt16(count))
            buffer.writeString(text)
        } else {
            let utf8 = text.utf8.prefix(Int(absent) - 1)
            buffer.writeInteger(UInt16(utf8.count))
            buffer.writeBytes(utf8)
        }
    }

    /// nil: malformed; .some(nil): absent.
    private static func read(_ buffer: inout ByteBuffer) -> String?? {
        guard let length = buffer.readInteger(as: UInt16.self) else { return nil }
        if length == absent { return .some(nil) }
        guard let text = buffer.readString(length: Int(length)) else { return nil }
        return .some(text)
    }
}
