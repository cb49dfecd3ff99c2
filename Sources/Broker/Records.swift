import Crypto
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore

/// How the broker's state is laid out in its `BrokerStore` (version 1 of the broker store).
///
/// `messages` table: key = message key (UInt64 big-endian), value = received-at time
/// (Int64 µs since the epoch, little-endian) followed by the PUBLISH as MQTT 5.0 encodes it
/// (QoS as published, packet identifier 1 when QoS > 0, DUP 0, no Topic Alias and no
/// Subscription Identifier). Reusing the wire format keeps every v5 property without a second
/// serializer, and the codec's tests pin it.
///
/// `sessions` table: key = session name (UTF-8), 0x00, kind, suffix:
/// - `S` + topic filter (UTF-8): options byte (QoS | No Local << 2 | Retain As Published << 3 |
///   Retain Handling << 4), a flag byte (1 = has identifier), the identifier (UInt32 LE).
/// - `D` + delivery sequence (UInt64 BE, so a session's deliveries come back in order):
///   message key (UInt64 LE), QoS, state (0 queued, 1 awaiting PUBACK, 2 awaiting PUBREC,
///   3 awaiting PUBCOMP), packet identifier (UInt16 LE), sent flag, retain flag, count of
///   subscription identifiers (UInt16 LE), each identifier (UInt32 LE), then, for a copy
///   chosen for a shared subscription, its `$share/...` filter (UTF-8, to the end). The state
///   is the one the delivery had when the record was last written: a QoS 1 delivery taken
///   from the queue into flight is not rewritten then (`Broker.pump`), only at the broker's
///   close (`writeStaleRecords`), so a record that says queued may belong to one in flight.
///   Loading treats such a record as queued (it goes again, with a new identifier).
/// - `I` + packet identifier (UInt16 BE): an inbound QoS 2 message delivered, PUBREL not yet
///   received; empty value.
/// - A subscription whose key would pass `longestKey` is stored under `S` + the filter's first
///   bytes + 0xFF + SHA-256 of the filter, and its value carries the filter after the six
///   bytes (0xFF never occurs in UTF-8, so such a key never equals a plain one).
/// - `W` (no suffix): the session's will message: when it is due (Int64 µs LE; 0 while its
///   connection is up), its delay in seconds (UInt32 LE), then the will as a PUBLISH, as in
///   the `messages` table (received-at 0, without the Will Delay Interval).
enum BrokerRecords {
    static let subscriptionKind = UInt8(ascii: "S")
    static let deliveryKind = UInt8(ascii: "D")
    static let inboundKind = UInt8(ascii: "I")
    static let willKind = UInt8(ascii: "W")

    static func sessionPrefix(_ name: SessionName) -> [UInt8] {
        var bytes = Array(name.value.utf8)
        bytes.append(0)
        return bytes
    }

    static func messageKey(_ key: UInt64) -> [UInt8] {
        withUnsafeBytes(of: key.bigEndian) { Array($0) }
    }

    static func deliveryKey(_ prefix: [UInt8], _ sequence: UInt64) -> [UInt8] {
        var key = prefix
        key.reserveCapacity(prefix.count + 9)
        key.append(deliveryKind)
        withUnsafeBytes(of: sequence.bigEndian) { key.append(contentsOf: $0) }
        return key
    }

    static func subscriptionKey(_ prefix: [UInt8], _ filter: String) -> [UInt8] {
        var key = prefix
        key.append(subscriptionKind)
        return boundedKey(key, Array(filter.utf8))
    }

    /// Whether a subscription's key is a digest (its filter is then in the value).
    static func subscriptionKeyIsHashed(_ prefix: [UInt8], _ filter: String) -> Bool {
        prefix.count + 1 + filter.utf8.count > longestKey
    }

    /// `retained` table key of a topic: the topic, or a digest when it is too long (the full
    /// topic is in the stored PUBLISH anyway).
    static func retainedKey(_ topic: String) -> [UInt8] {
        boundedKey([], Array(topic.utf8))
    }

    /// LMDB refuses keys longer than 511 bytes (MDB_BAD_VALSIZE); topics and filters may be
    /// 65,535. Keys up to this length are stored as they are.
    static let longestKey = 480

    /// `head` + `name` when that fits in `longestKey`; otherwise `head`, the first bytes of
    /// `name`, 0xFF and the SHA-256 of `name` (33 bytes), within `longestKey`.
    static func boundedKey(_ head: [UInt8], _ name: [UInt8]) -> [UInt8] {
        guard head.count + name.count > longestKey else { return head + name }
        var key = head
        key.append(contentsOf: name.prefix(max(0, longestKey - head.count - 33)))
        key.append(0xFF)
        key.append(contentsOf: SHA256.hash(data: name))
        return key
    }

    static func inboundKey(_ prefix: [UInt8], _ packetIdentifier: UInt16) -> [UInt8] {
        var key = prefix
        key.append(inboundKind)
        withUnsafeBytes(of: packetIdentifier.bigEndian) { key.append(contentsOf: $0) }
        return key
    }

    static func willKey(_ prefix: [UInt8]) -> [UInt8] {
        prefix + [willKind]
    }

    // MARK: wills

    static func encodeWill(_ will: MQTTWill, due: Int64, delay: UInt32) -> [UInt8]? {
        var properties = will.properties
        properties.willDelayInterval = nil
        let publish = MQTTPublish(
            topicName: will.topic, payload: will.payload, qos: will.qos, retain: will.retain,
            packetIdentifier: will.qos == .atMostOnce ? nil : 1, properties: properties)
        guard let message = encodeMessage(publish, receivedAt: 0) else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(12 + message.count)
        withUnsafeBytes(of: due.littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: delay.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: message)
        return bytes
    }

    static func decodeWill(_ bytes: UnsafeRawBufferPointer) -> (MQTTWill, due: Int64, delay: UInt32)? {
        guard bytes.count > 12,
            let (publish, _) = decodeMessage(UnsafeRawBufferPointer(rebasing: bytes[12...]))
        else { return nil }
        let due = Int64(littleEndian: bytes.loadUnaligned(as: Int64.self))
        let delay = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        var properties = publish.properties
        if delay > 0 { properties.willDelayInterval = delay }
        let will = MQTTWill(
            topic: publish.topicName, payload: publish.payload, qos: publish.qos, retain: publish.retain,
            properties: properties)
        return (will, due, delay)
    }

    // MARK: messages

    static func encodeMessage(_ publish: MQTTPublish, receivedAt: Int64) -> [UInt8]? {
        var stored = publish
        stored.duplicate = false
        stored.packetIdentifier = stored.qos == .atMostOnce ? nil : 1
        var buffer = ByteBufferAllocator().buffer(capacity: 16 + publish.topicName.utf8.count + publish.payload.readableBytes)
        buffer.writeInteger(receivedAt, endianness: .little)
        do {
            try MQTTEncoder(protocolVersion: .mqtt5).encode(.publish(stored), into: &buffer)
        } catch {
            return nil
        }
        return Array(buffer.readableBytesView)
    }

    static func decodeMessage(_ bytes: UnsafeRawBufferPointer) -> (MQTTPublish, Int64)? {
        guard bytes.count > 8 else { return nil }
        let receivedAt = Int64(littleEndian: bytes.loadUnaligned(as: Int64.self))
        var buffer = ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: bytes[8...]))
        guard case .packet(.publish(var publish)) = MQTTDecoder.decode(
            &buffer, protocolVersion: .mqtt5, maximumPacketSize: MQTTDecoder.largestPacketSize)
        else { return nil }
        publish.packetIdentifier = nil
        publish.duplicate = false
        return (publish, receivedAt)
    }

    // MARK: deliveries

    struct DeliveryRecord {
        var messageKey: UInt64
        var qos: MQTTQoS
        var state: OutboundState
        var packetIdentifier: UInt16
        var sent: Bool
        var retain: Bool
        var identifiers: [UInt32]
        var share: String?
    }

    static func encodeDelivery(_ d: OutboundMessage) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 + 4 * d.identifiers.count)
        withUnsafeBytes(of: d.message.storeKey.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(d.qos.rawValue)
        bytes.append(d.state.rawValue)
        withUnsafeBytes(of: d.packetIdentifier.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(d.sent ? 1 : 0)
        bytes.append(d.retain ? 1 : 0)
        withUnsafeBytes(of: UInt16(d.identifiers.count).littleEndian) { bytes.append(contentsOf: $0) }
        for id in d.identifiers { withUnsafeBytes(of: id.littleEndian) { bytes.append(contentsOf: $0) } }
        if let share = d.share { bytes.append(contentsOf: share.utf8) }
        return bytes
    }

    static func decodeDelivery(_ bytes: UnsafeRawBufferPointer) -> DeliveryRecord? {
        guard bytes.count >= 16 else { return nil }
        guard let qos = MQTTQoS(rawValue: bytes[8]), qos != .atMostOnce,
            let state = OutboundState(rawValue: bytes[9])
        else { return nil }
        let count = Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
        guard bytes.count >= 16 + 4 * count else { return nil }
        let share = bytes.count > 16 + 4 * count
            ? String(decoding: UnsafeRawBufferPointer(rebasing: bytes[(16 + 4 * count)...]), as: UTF8.self) : nil
        var identifiers: [UInt32] = []
        identifiers.reserveCapacity(count)
        for i in 0..<count {
            identifiers.append(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 16 + 4 * i, as: UInt32.self)))
        }
        return DeliveryRecord(
            messageKey: UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self)), qos: qos, state: state,
            packetIdentifier: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 10, as: UInt16.self)),
            sent: bytes[12] != 0, retain: bytes[13] != 0, identifiers: identifiers, share: share)
    }

    // MARK: subscriptions

    static func encodeSubscription(_ options: MQTTSubscriptionOptions, _ identifier: UInt32?) -> [UInt8] {
        var byte = options.qos.rawValue | options.retainHandling.rawValue << 4
        if options.noLocal { byte |= 0x04 }
        if options.retainAsPublished { byte |= 0x08 }
        var bytes: [UInt8] = [byte, identifier == nil ? 0 : 1]
        withUnsafeBytes(of: (identifier ?? 0).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes
    }

    /// A subscription's stored value: its options and identifier, and its filter when the
    /// key is a digest (`subscriptionKey`).
    static func subscriptionValue(
        _ prefix: [UInt8], _ filter: String, _ options: MQTTSubscriptionOptions, _ identifier: UInt32?
    ) -> [UInt8] {
        var bytes = encodeSubscription(options, identifier)
        if subscriptionKeyIsHashed(prefix, filter) { bytes.append(contentsOf: filter.utf8) }
        return bytes
    }

    /// The options, the identifier, and the filter when the value carries it (a hashed key).
    static func decodeSubscription(_ bytes: UnsafeRawBufferPointer) -> (MQTTSubscriptionOptions, UInt32?)? {
        guard bytes.count >= 6 else { return nil }
        let byte = bytes[0]
        guard let qos = MQTTQoS(rawValue: byte & 0b11),
            let handling = MQTTRetainHandling(rawValue: (byte >> 4) & 0b11)
        else { return nil }
        let options = MQTTSubscriptionOptions(
            qos: qos, noLocal: byte & 0x04 != 0, retainAsPublished: byte & 0x08 != 0, retainHandling: handling)
        let identifier = bytes[1] == 0 ? nil : UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        return (options, identifier)
    }
}
