import NIOCore

/// What to do with retained messages when a subscription is made (section 3.8.3.1).
public enum MQTTRetainHandling: UInt8, Sendable, Hashable, CaseIterable {
    case sendOnSubscribe = 0
    case sendOnNewSubscribe = 1
    case doNotSend = 2
}

/// The options byte of one subscription. 3.1.1 has only the QoS; the rest is not written.
public struct MQTTSubscriptionOptions: Sendable, Hashable {
    public var qos: MQTTQoS
    public var noLocal: Bool
    public var retainAsPublished: Bool
    public var retainHandling: MQTTRetainHandling

    public init(qos: MQTTQoS = .atMostOnce, noLocal: Bool = false, retainAsPublished: Bool = false,
                retainHandling: MQTTRetainHandling = .sendOnSubscribe) {
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling
    }

    var byte: UInt8 {
        var byte = qos.rawValue | retainHandling.rawValue << 4
        if noLocal { byte |= 0x04 }
        if retainAsPublished { byte |= 0x08 }
        return byte
    }
}

public struct MQTTSubscription: Sendable, Hashable {
    /// Not checked here beyond UTF-8: an invalid filter fails that one subscription (SUBACK
    /// 0x8F), not the packet, so the broker judges it.
    public var topicFilter: String
    public var options: MQTTSubscriptionOptions

    public init(topicFilter: String, options: MQTTSubscriptionOptions = MQTTSubscriptionOptions()) {
        self.topicFilter = topicFilter
        self.options = options
    }
}

/// SUBSCRIBE (section 3.8).
public struct MQTTSubscribe: Sendable, Equatable {
    public var packetIdentifier: UInt16
    public var subscriptions: [MQTTSubscription]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, subscriptions: [MQTTSubscription], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.subscriptions = subscriptions
        self.properties = properties
    }
}

/// SUBACK (section 3.9). 3.1.1 return codes are 0, 1, 2 and 0x80, which are the same bytes
/// as v5's Granted QoS 0–2 and Unspecified error; any v5 failure is sent to 3.1.1 as 0x80.
public struct MQTTSubAck: Sendable, Equatable {
    public var packetIdentifier: UInt16
    public var reasonCodes: [MQTTReasonCode]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.reasonCodes = reasonCodes
        self.properties = properties
    }
}

/// UNSUBSCRIBE (section 3.10).
public struct MQTTUnsubscribe: Sendable, Equatable {
    public var packetIdentifier: UInt16
    public var topicFilters: [String]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, topicFilters: [String], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.topicFilters = topicFilters
        self.properties = properties
    }
}

/// UNSUBACK (section 3.11). 3.1.1 has no reason codes: they decode as empty and are not written.
public struct MQTTUnsubAck: Sendable, Equatable {
    public var packetIdentifier: UInt16
    public var reasonCodes: [MQTTReasonCode]
    public var properties: MQTTProperties

    public init(packetIdentifier: UInt16, reasonCodes: [MQTTReasonCode] = [], properties: MQTTProperties = []) {
        self.packetIdentifier = packetIdentifier
        self.reasonCodes = reasonCodes
        self.properties = properties
    }
}

// MARK: - Decoding

extension MQTTSubscribe {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTSubscribe
    {
        let packetIdentifier = try reader.readPacketIdentifier()
        let properties = version.isV5 ? try reader.readProperties(.subscribe) : MQTTProperties()
        var subscriptions: [MQTTSubscription] = []
        while !reader.isAtEnd {
            let filter = try reader.readString("topic filter")
            let byte = try reader.readByte("subscription options")
            let options = try decodeOptions(byte, filter: filter, version: version, reader: reader)
            subscriptions.append(MQTTSubscription(topicFilter: filter, options: options))
        }
        guard !subscriptions.isEmpty else { throw reader.failure(.emptyPayload) }
        return MQTTSubscribe(packetIdentifier: packetIdentifier, subscriptions: subscriptions, properties: properties)
    }

    private static func decodeOptions(
        _ byte: UInt8, filter: String, version: MQTTProtocolVersion, reader: PacketReader
    ) throws(MQTTDecodingError) -> MQTTSubscriptionOptions {
        let reserved: UInt8 = version.isV5 ? 0xC0 : 0xFC
        guard byte & reserved == 0 else { throw reader.failure(.reservedSubscriptionOptionBitsSet(byte)) }
        guard let qos = MQTTQoS(rawValue: byte & 0b11) else { throw reader.failure(.invalidSubscriptionQoS) }
        guard let retainHandling = MQTTRetainHandling(rawValue: (byte >> 4) & 0b11) else {
            throw reader.failure(.invalidRetainHandling)
        }
        let noLocal = byte & 0x04 != 0
        if noLocal, filter.utf8.starts(with: "$share/".utf8) { throw reader.failure(.noLocalOnSharedSubscription) }
        return MQTTSubscriptionOptions(
            qos: qos, noLocal: noLocal, retainAsPublished: byte & 0x08 != 0, retainHandling: retainHandling)
    }
}

extension MQTTSubAck {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTSubAck
    {
        let packetIdentifier = try reader.readPacketIdentifier()
        let properties = version.isV5 ? try reader.readProperties(.suback) : MQTTProperties()
        let allowed = version.isV5 ? ReasonCodes.suback : ReasonCodes.subackV3
        let reasonCodes = try reader.readReasonCodeList(allowed)
        return MQTTSubAck(packetIdentifier: packetIdentifier, reasonCodes: reasonCodes, properties: properties)
    }
}

extension MQTTUnsubscribe {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTUnsubscribe
    {
        let packetIdentifier = try reader.readPacketIdentifier()
        let properties = version.isV5 ? try reader.readProperties(.unsubscribe) : MQTTProperties()
        var topicFilters: [String] = []
        while !reader.isAtEnd { topicFilters.append(try reader.readString("topic filter")) }
        guard !topicFilters.isEmpty else { throw reader.failure(.emptyPayload) }
        return MQTTUnsubscribe(packetIdentifier: packetIdentifier, topicFilters: topicFilters, properties: properties)
    }
}

extension MQTTUnsubAck {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTUnsubAck
    {
        let packetIdentifier = try reader.readPacketIdentifier()
        guard version.isV5 else {
            try reader.expectEnd()
            return MQTTUnsubAck(packetIdentifier: packetIdentifier)
        }
        let properties = try reader.readProperties(.unsuback)
        let reasonCodes = try reader.readReasonCodeList(ReasonCodes.unsuback)
        return MQTTUnsubAck(packetIdentifier: packetIdentifier, reasonCodes: reasonCodes, properties: properties)
    }
}

extension PacketReader {
    /// The rest of the packet as one reason code per topic filter; there is at least one.
    fileprivate mutating func readReasonCodeList(_ allowed: ReasonCodes) throws(MQTTDecodingError)
        -> [MQTTReasonCode]
    {
        guard !isAtEnd else { throw failure(.emptyPayload) }
        var codes: [MQTTReasonCode] = []
        codes.reserveCapacity(buffer.readableBytes)
        while let raw = buffer.readInteger(as: UInt8.self) {
            let code = MQTTReasonCode(rawValue: raw)
            guard allowed.contains(code) else { throw failure(.invalidReasonCode(raw)) }
            codes.append(code)
        }
        return codes
    }
}

// MARK: - Encoding

extension MQTTSubscribe {
    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        guard packetIdentifier != 0 else { throw MQTTEncodingError(.invalidPacketIdentifier) }
        guard !subscriptions.isEmpty else { throw MQTTEncodingError(.emptyPayload) }
        var sizes = EncodingSizes(body: 2)
        if version.isV5 {
            sizes.properties = try properties.encodedContentSize(.subscribe, .subscribe)
            sizes.body += variableByteIntegerSize(sizes.properties) + sizes.properties
        }
        for subscription in subscriptions {
            sizes.body += try stringSize(subscription.topicFilter, field: "topic filter") + 1
        }
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version.isV5 { properties.write(contentSize: sizes.properties, to: &buffer) }
        for subscription in subscriptions {
            buffer.writeMQTTString(subscription.topicFilter)
            buffer.writeInteger(version.isV5 ? subscription.options.byte : subscription.options.qos.rawValue)
        }
    }
}

extension MQTTSubAck {
    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        guard packetIdentifier != 0 else { throw MQTTEncodingError(.invalidPacketIdentifier) }
        guard !reasonCodes.isEmpty else { throw MQTTEncodingError(.emptyPayload) }
        var sizes = EncodingSizes(body: 2 + reasonCodes.count)
        if version.isV5 {
            sizes.properties = try properties.encodedContentSize(.suback, .suback)
            sizes.body += variableByteIntegerSize(sizes.properties) + sizes.properties
        } else {
            for code in reasonCodes where !code.isFailure && code.rawValue > 2 {
                throw MQTTEncodingError(.invalidReasonCode(code))
            }
        }
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version.isV5 {
            properties.write(contentSize: sizes.properties, to: &buffer)
            for code in reasonCodes { buffer.writeInteger(code.rawValue) }
        } else {
            for code in reasonCodes { buffer.writeInteger(code.isFailure ? 0x80 : code.rawValue) }
        }
    }
}

extension MQTTUnsubscribe {
    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        guard packetIdentifier != 0 else { throw MQTTEncodingError(.invalidPacketIdentifier) }
        guard !topicFilters.isEmpty else { throw MQTTEncodingError(.emptyPayload) }
        var sizes = EncodingSizes(body: 2)
        if version.isV5 {
            sizes.properties = try properties.encodedContentSize(.unsubscribe, .unsubscribe)
            sizes.body += variableByteIntegerSize(sizes.properties) + sizes.properties
        }
        for filter in topicFilters { sizes.body += try stringSize(filter, field: "topic filter") }
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        if version.isV5 { properties.write(contentSize: sizes.properties, to: &buffer) }
        for filter in topicFilters { buffer.writeMQTTString(filter) }
    }
}

extension MQTTUnsubAck {
    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        guard packetIdentifier != 0 else { throw MQTTEncodingError(.invalidPacketIdentifier) }
        var sizes = EncodingSizes(body: 2)
        if version.isV5 {
            guard !reasonCodes.isEmpty else { throw MQTTEncodingError(.emptyPayload) }
            sizes.properties = try properties.encodedContentSize(.unsuback, .unsuback)
            sizes.body += variableByteIntegerSize(sizes.properties) + sizes.properties + reasonCodes.count
        }
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        buffer.writeInteger(packetIdentifier)
        guard version.isV5 else { return }
        properties.write(contentSize: sizes.properties, to: &buffer)
        for code in reasonCodes { buffer.writeInteger(code.rawValue) }
    }
}
