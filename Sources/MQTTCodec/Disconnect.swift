import NIOCore

/// DISCONNECT (section 3.14). 3.1.1's DISCONNECT has no fields: it decodes as Normal
/// disconnection without properties, and the fields are not written.
public struct MQTTDisconnect: Sendable, Equatable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(reasonCode: MQTTReasonCode = .normalDisconnection, properties: MQTTProperties = []) {
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

/// AUTH (section 3.15), 5.0 only.
public struct MQTTAuth: Sendable, Equatable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = []) {
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

/// DISCONNECT and AUTH share a layout: an optional reason code (absent means 0x00) and
/// optional properties (absent means none), sections 3.14.2.1 and 3.15.2.1.
extension PacketReader {
    fileprivate mutating func readReasonAndProperties(_ allowed: ReasonCodes, _ place: PropertyPlace)
        throws(MQTTDecodingError) -> (MQTTReasonCode, MQTTProperties)
    {
        guard !isAtEnd else { return (.success, MQTTProperties()) }
        let raw = try readByte("reason code")
        let code = MQTTReasonCode(rawValue: raw)
        guard allowed.contains(code) else { throw failure(.invalidReasonCode(raw)) }
        let properties = isAtEnd ? MQTTProperties() : try readProperties(place)
        try expectEnd()
        return (code, properties)
    }
}

private func measureReasonAndProperties(
    _ code: MQTTReasonCode, _ properties: MQTTProperties, _ place: PropertyPlace, _ type: MQTTPacketType
) throws(MQTTEncodingError) -> EncodingSizes {
    var sizes = EncodingSizes()
    sizes.properties = try properties.encodedContentSize(place, type)
    if sizes.properties > 0 {
        sizes.body = 1 + variableByteIntegerSize(sizes.properties) + sizes.properties
    } else if code != .success {
        sizes.body = 1
    }
    return sizes
}

private func writeReasonAndProperties(
    _ code: MQTTReasonCode, _ properties: MQTTProperties, _ sizes: EncodingSizes, to buffer: inout ByteBuffer
) {
    guard sizes.body > 0 else { return }
    buffer.writeInteger(code.rawValue)
    if sizes.properties > 0 { properties.write(contentSize: sizes.properties, to: &buffer) }
}

extension MQTTDisconnect {
    static func decode(_ reader: inout PacketReader, version: MQTTProtocolVersion) throws(MQTTDecodingError)
        -> MQTTDisconnect
    {
        guard version.isV5 else {
            try reader.expectEnd()
            return MQTTDisconnect()
        }
        let (code, properties) = try reader.readReasonAndProperties(ReasonCodes.disconnect, .disconnect)
        return MQTTDisconnect(reasonCode: code, properties: properties)
    }

    func measure(_ version: MQTTProtocolVersion) throws(MQTTEncodingError) -> EncodingSizes {
        guard version.isV5 else { return EncodingSizes() }
        return try measureReasonAndProperties(reasonCode, properties, .disconnect, .disconnect)
    }

    func write(_ sizes: EncodingSizes, to buffer: inout ByteBuffer) {
        writeReasonAndProperties(reasonCode, properties, sizes, to: &buffer)
    }
}

extension MQTTAuth {
    static func decode(_ reader: inout PacketReader) throws(MQTTDecodingError) -> MQTTAuth {
        let (code, properties) = try reader.readReasonAndProperties(ReasonCodes.auth, .auth)
        return MQTTAuth(reasonCode: code, properties: properties)
    }

    func measure() throws(MQTTEncodingError) -> EncodingSizes {
        try measureReasonAndProperties(reasonCode, properties, .auth, .auth)
    }

    func write(_ sizes: EncodingSizes, to buffer: inout ByteBuffer) {
        writeReasonAndProperties(reasonCode, properties, sizes, to: &buffer)
    }
}
