import NIOCore

/// CONNECT (section 3.1). It carries its own protocol version: it is decoded before any
/// version is negotiated, and encoded in `protocolVersion` whatever the encoder's version.
public struct MQTTConnect: Sendable, Equatable {
    public var protocolVersion: MQTTProtocolVersion
    public var clientIdentifier: String
    /// Clean Start in 5.0, Clean Session in 3.1.1.
    public var cleanStart: Bool
    /// Seconds; 0 turns keep-alive off.
    public var keepAlive: UInt16
    public var userName: String?
    /// Binary data, not a string (section 3.1.3.6).
    public var password: ByteBuffer?
    public var will: MQTTWill?
    /// 5.0 only; empty and not written for 3.1.1.
    public var properties: MQTTProperties

    public init(
        protocolVersion: MQTTProtocolVersion, clientIdentifier: String, cleanStart: Bool = true,
        keepAlive: UInt16 = 60, userName: String? = nil, password: ByteBuffer? = nil, will: MQTTWill? = nil,
        properties: MQTTProperties = []
    ) {
        self.protocolVersion = protocolVersion
        self.clientIdentifier = clientIdentifier
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.userName = userName
        self.password = password
        self.will = will
        self.properties = properties
    }
}

/// The will message of a CONNECT.
public struct MQTTWill: Sendable, Equatable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    /// 5.0 only: Will Delay Interval and the message's own properties.
    public var properties: MQTTProperties

    public init(topic: String, payload: ByteBuffer, qos: MQTTQoS = .atMostOnce, retain: Bool = false,
                properties: MQTTProperties = []) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }
}

/// CONNACK (section 3.2). A 3.1.1 CONNACK carries `MQTTConnectReturnCode(reasonCode)` and
/// decodes to that code's `reasonCode`, so the broker decides in v5 terms for both versions.
public struct MQTTConnAck: Sendable, Equatable {
    public var sessionPresent: Bool
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(sessionPresent: Bool = false, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
        self.sessionPresent = sessionPresent
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

private enum ConnectFlags {
    static let reserved: UInt8 = 0x01
    static let cleanStart: UInt8 = 0x02
    static let will: UInt8 = 0x04
    static let willQoSShift: UInt8 = 3
    static let willRetain: UInt8 = 0x20
    static let password: UInt8 = 0x40
    static let userName: UInt8 = 0x80
}

// MARK: - Decoding

extension MQTTConnect {
    static func decode(_ reader: inout PacketReader) throws(MQTTDecodingError) -> MQTTConnect {
        let name = try reader.readString("protocol name")
        let level = try reader.readByte("protocol level")
        let version: MQTTProtocolVersion
        switch (level, name) {
        case (4, "MQTT"): version = .mqtt3_1_1
        case (5, "MQTT"): version = .mqtt5
        case (3, "MQIsdp"): version = .mqtt3_1
        default: throw reader.failure(.unsupportedProtocol(name: name, level: level))
        }
        reader.version = version

        let flags = try reader.readByte("connect flags")
        guard flags & ConnectFlags.reserved == 0 else { throw reader.failure(.reservedConnectFlagSet) }
        let hasWill = flags & ConnectFlags.will != 0
        let willQoSBits = (flags >> ConnectFlags.willQoSShift) & 0b11
        let willRetain = flags & ConnectFlags.willRetain != 0
        if !hasWill, willQoSBits != 0 || willRetain { throw reader.failure(.willOptionsWithoutWill) }
        guard let willQoS = MQTTQoS(rawValue: willQoSBits) else { throw reader.failure(.invalidQoS) }
        let hasUserName = flags & ConnectFlags.userName != 0
        let hasPassword = flags & ConnectFlags.password != 0
        if !version.isV5, hasPassword, !hasUserName { throw reader.failure(.passwordWithoutUserName) }

        let keepAlive = try reader.readUInt16("keep alive")
        let properties = version.isV5 ? try reader.readProperties(.connect) : MQTTProperties()
        let clientIdentifier = try reader.readString("client identifier")
        var will: MQTTWill?
        if hasWill {
            let willProperties = version.isV5 ? try reader.readProperties(.will) : MQTTProperties()
            let topic = try reader.readString("will topic")
            guard !topic.isEmpty else { throw reader.failure(.emptyTopicName) }
            guard !containsWildcard(topic) else { throw reader.failure(.wildcardInTopicName) }
            let payload = try reader.readBinary("will payload")
            if willProperties.payloadFormatIndicator == .utf8, !isValidUTF8(payload) {
                throw reader.failure(.payloadNotUTF8)
            }
            will = MQTTWill(topic: topic, payload: payload, qos: willQoS, retain: willRetain, properties: willProperties)
        }
        let userName = hasUserName ? try reader.readString("user name") : nil
        let password = hasPassword ? try reader.readBinary("password") : nil
        try reader.expectEnd()
        return MQTTConnect(
            protocolVersion: version, clientIdentifier: clientIdentifier, cleanStart: flags & ConnectFlags.cleanStart != 0,
            keepAlive: keepAlive, userName: userName, password: password, will: will, properties: properties)
    }
}

extension MQTTConnAck {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTConnAck
    {
        let flags = try reader.readByte("acknowledge flags")
        guard flags & 0xFE == 0 else { throw reader.failure(.invalidConnectAcknowledgeFlags(flags)) }
        let raw = try reader.readByte("reason code")
        let reasonCode: MQTTReasonCode
        var properties = MQTTProperties()
        if version.isV5 {
            reasonCode = MQTTReasonCode(rawValue: raw)
            guard ReasonCodes.connack.contains(reasonCode) else { throw reader.failure(.invalidReasonCode(raw)) }
            properties = try reader.readProperties(.connack)
        } else {
            guard let returnCode = MQTTConnectReturnCode(rawValue: raw) else {
                throw reader.failure(.invalidReasonCode(raw))
            }
            reasonCode = returnCode.reasonCode
        }
        try reader.expectEnd()
        return MQTTConnAck(sessionPresent: flags == 1, reasonCode: reasonCode, properties: properties)
    }
}

// MARK: - Encoding

extension MQTTConnect {
    func measure() throws(MQTTEncodingError) -> EncodingSizes {
        let version = protocolVersion
        var sizes = EncodingSizes()
        var body = 2 + version.protocolName.utf8.count + 1 + 1 + 2
        body += try stringSize(clientIdentifier, field: "client identifier")
        if version.isV5 {
            sizes.properties = try properties.encodedContentSize(.connect, .connect)
            body += variableByteIntegerSize(sizes.properties) + sizes.properties
        }
        if let will {
            if version.isV5 {
                sizes.extraProperties = try will.properties.encodedContentSize(.will, .connect)
                body += variableByteIntegerSize(sizes.extraProperties) + sizes.extraProperties
            }
            guard !will.topic.isEmpty, !containsWildcard(will.topic) else {
                throw MQTTEncodingError(.invalidField("will topic"))
            }
            body += try stringSize(will.topic, field: "will topic")
            body += try binarySize(will.payload, field: "will payload")
        }
        if let userName { body += try stringSize(userName, field: "user name") }
        if let password {
            guard version.isV5 || userName != nil else { throw MQTTEncodingError(.passwordWithoutUserName) }
            body += try binarySize(password, field: "password")
        }
        sizes.body = body
        return sizes
    }

    func write(_ sizes: EncodingSizes, to buffer: inout ByteBuffer) {
        let version = protocolVersion
        buffer.writeMQTTString(version.protocolName)
        buffer.writeInteger(version.rawValue)
        var flags: UInt8 = 0
        if cleanStart { flags |= ConnectFlags.cleanStart }
        if let will {
            flags |= ConnectFlags.will | will.qos.rawValue << ConnectFlags.willQoSShift
            if will.retain { flags |= ConnectFlags.willRetain }
        }
        if userName != nil { flags |= ConnectFlags.userName }
        if password != nil { flags |= ConnectFlags.password }
        buffer.writeInteger(flags)
        buffer.writeInteger(keepAlive)
        if version.isV5 { properties.write(contentSize: sizes.properties, to: &buffer) }
        buffer.writeMQTTString(clientIdentifier)
        if let will {
            if version.isV5 { will.properties.write(contentSize: sizes.extraProperties, to: &buffer) }
            buffer.writeMQTTString(will.topic)
            buffer.writeMQTTBinary(will.payload)
        }
        if let userName { buffer.writeMQTTString(userName) }
        if let password { buffer.writeMQTTBinary(password) }
    }
}

extension MQTTConnAck {
    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        var sizes = EncodingSizes()
        if version.isV5 {
            sizes.properties = try properties.encodedContentSize(.connack, .connack)
            sizes.body = 2 + variableByteIntegerSize(sizes.properties) + sizes.properties
        } else {
            sizes.body = 2
        }
        return sizes
    }

    func write(_ sizes: EncodingSizes, _ version: MQTTProtocolVersion, to buffer: inout ByteBuffer) {
        // MQTT-3.2.2-6 (5.0) and -4 (3.1.1): a refusal never says a session is present.
        let present: UInt8 = sessionPresent && !reasonCode.isFailure ? 1 : 0
        if version.isV5 {
            buffer.writeMultipleIntegers(present, reasonCode.rawValue)
            properties.write(contentSize: sizes.properties, to: &buffer)
        } else {
            buffer.writeMultipleIntegers(present, MQTTConnectReturnCode(reasonCode).rawValue)
        }
    }
}
