import NIOCore

/// PUBLISH (section 3.3).
public struct MQTTPublish: Sendable, Equatable {
    /// May be empty in 5.0 when a Topic Alias property stands in for it.
    public var topicName: String
    /// A slice of the received packet when decoded: nothing is copied.
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    public var duplicate: Bool
    /// Present exactly when `qos` is above 0.
    public var packetIdentifier: UInt16?
    public var properties: MQTTProperties

    public init(
        topicName: String, payload: ByteBuffer, qos: MQTTQoS = .atMostOnce, retain: Bool = false,
        duplicate: Bool = false, packetIdentifier: UInt16? = nil, properties: MQTTProperties = []
    ) {
        self.topicName = topicName
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.duplicate = duplicate
        self.packetIdentifier = packetIdentifier
        self.properties = properties
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4–3.7) have one shape; the packet case
/// says which it is, and each allows its own reason codes. 3.1.1 carries only the identifier.
public struct MQTTPublishResponse: Sendable, Equatable {
    public var packetIdentifier: UInt16
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

private enum PublishFlags {
    static let retain: UInt8 = 0x01
    static let qosShift: UInt8 = 1
    static let duplicate: UInt8 = 0x08
}

extension MQTTPublish {
    /// Checks the fixed-header flags as soon as the first byte arrives, before the body.
    static func checkFlags(_ flags: UInt8) -> MQTTDecodingError.Problem? {
        let qos = (flags >> PublishFlags.qosShift) & 0b11
        if qos == 3 { return .invalidQoS }
        if qos == 0, flags & PublishFlags.duplicate != 0 { return .duplicateFlagWithQoS0 }
        return nil
    }

    static func decode(_ reader: inout PacketReader, flags: UInt8, version: MQTTProtocolVersion)
        throws(MQTTDecodingError) -> MQTTPublish
    {
        let qos = MQTTQoS(rawValue: (flags >> PublishFlags.qosShift) & 0b11)!  // checkFlags ran first
        let topicName = try reader.readString("topic name")
        let packetIdentifier = qos == .atMostOnce ? nil : try reader.readPacketIdentifier()
        let properties = version.isV5 ? try reader.readProperties(.publish) : MQTTProperties()
        if topicName.isEmpty {
            guard properties.topicAlias != nil else { throw reader.failure(.emptyTopicName) }
        } else if containsWildcard(topicName) {
            throw reader.failure(.wildcardInTopicName)
        }
        let payload = reader.readRest()
        if version.isV5, properties.payloadFormatIndicator == .utf8, !isValidUTF8(payload) {
            throw reader.failure(.payloadNotUTF8)
        }
        return MQTTPublish(
            topicName: topicName, payload: payload, qos: qos, retain: flags & PublishFlags.retain != 0,
            duplicate: flags & PublishFlags.duplicate != 0, packetIdentifier: packetIdentifier,
            properties: properties)
    }

    var flags: UInt8 {
        var flags = qos.rawValue << PublishFlags.qosShift
        if retain { flags |= PublishFlags.retain }
        if duplicate { flags |= PublishFlags.duplicate }
        return flags
    }

    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        var sizes = EncodingSizes()
        if qos == .atMostOnce {
            guard packetIdentifier == nil else { throw MQTTEncodingError(.invalidPacketIdentifier) }
            guard !duplicate else { throw MQTTEncodingError(.invalidField("DUP on QoS 0")) }
        } else {
            guard let id = packetIdentifier, id != 0 else { throw MQTTEncodingError(.invalidPacketIdentifier) }
        }
        guard !containsWildcard(topicName) else { throw MQTTEncodingError(.invalidField("topic name")) }
        var body = try stringSize(topicName, field: "topic name")
        if packetIdentifier != nil { body += 2 }
        if version.isV5 {
            guard !topicName.isEmpty || properties.topicAlias != nil else {
                throw MQTTEncodingError(.invalidField("empty topic name without Topic Alias"))
            }
            sizes.properties = try properties.encodedContentSize(.publish, .publish)
            body += variableByteIntegerSize(sizes.properties) + sizes.properties
        } else {
            guard !topicName.isEmpty else { throw MQTTEncodingError(.invalidField("empty topic name")) }
        }
        sizes.body = body + payload.readableBytes
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeMQTTString(topicName)
        if let packetIdentifier { buffer.writeInteger(packetIdentifier) }
        if version.isV5 { properties.write(contentSize: sizes.properties, to: &buffer) }
        buffer.writeImmutableBuffer(payload)
    }
}

extension MQTTPublishResponse {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTPublishResponse
    {
        let packetIdentifier = try reader.readPacketIdentifier()
        var response = MQTTPublishResponse(packetIdentifier: packetIdentifier)
        // 5.0 omits the reason code when it is Success and the property length when there
        // are no properties (sections 3.4.2.1, 3.4.2.2).
        if version.isV5, !reader.isAtEnd {
            let raw = try reader.readByte("reason code")
            response.reasonCode = MQTTReasonCode(rawValue: raw)
            let allowed = reader.type == .puback || reader.type == .pubrec ? ReasonCodes.pubackPubrec
                : ReasonCodes.pubrelPubcomp
            guard allowed.contains(response.reasonCode) else { throw reader.failure(.invalidReasonCode(raw)) }
            if !reader.isAtEnd { response.properties = try reader.readProperties(.publishResponse) }
        }
        try reader.expectEnd()
        return response
    }

    func measure(_ version: MQTTProtocolVersion, _ type: MQTTPacketType) throws(MQTTEncodingError) -> EncodingSizes {
        guard packetIdentifier != 0 else { throw MQTTEncodingError(.invalidPacketIdentifier) }
        var sizes = EncodingSizes(body: 2)
        guard version.isV5 else { return sizes }
        sizes.properties = try properties.encodedContentSize(.publishResponse, type)
        if sizes.properties > 0 {
            sizes.body += 1 + variableByteIntegerSize(sizes.properties) + sizes.properties
        } else if reasonCode != .success {
            sizes.body += 1
        }
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        guard version.isV5, sizes.body > 2 else { return }
        buffer.writeInteger(reasonCode.rawValue)
        if sizes.properties > 0 { properties.write(contentSize: sizes.properties, to: &buffer) }
    }
}
