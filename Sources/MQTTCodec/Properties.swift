import NIOCore

/// The identifier byte of a v5 property (section 2.2.2.2).
public enum MQTTPropertyIdentifier: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case payloadFormatIndicator = 0x01
    case messageExpiryInterval = 0x02
    case contentType = 0x03
    case responseTopic = 0x08
    case correlationData = 0x09
    case subscriptionIdentifier = 0x0B
    case sessionExpiryInterval = 0x11
    case assignedClientIdentifier = 0x12
    case serverKeepAlive = 0x13
    case authenticationMethod = 0x15
    case authenticationData = 0x16
    case requestProblemInformation = 0x17
    case willDelayInterval = 0x18
    case requestResponseInformation = 0x19
    case responseInformation = 0x1A
    case serverReference = 0x1C
    case reasonString = 0x1F
    case receiveMaximum = 0x21
    case topicAliasMaximum = 0x22
    case topicAlias = 0x23
    case maximumQoS = 0x24
    case retainAvailable = 0x25
    case userProperty = 0x26
    case maximumPacketSize = 0x27
    case wildcardSubscriptionAvailable = 0x28
    case subscriptionIdentifierAvailable = 0x29
    case sharedSubscriptionAvailable = 0x2A

    /// One bit per identifier; every identifier is below 64, so a packet's allowed and seen
    /// sets are each one integer.
    var bit: UInt64 { 1 &<< UInt64(rawValue) }

    public var description: String {
        switch self {
        case .payloadFormatIndicator: "Payload Format Indicator"
        case .messageExpiryInterval: "Message Expiry Interval"
        case .contentType: "Content Type"
        case .responseTopic: "Response Topic"
        case .correlationData: "Correlation Data"
        case .subscriptionIdentifier: "Subscription Identifier"
        case .sessionExpiryInterval: "Session Expiry Interval"
        case .assignedClientIdentifier: "Assigned Client Identifier"
        case .serverKeepAlive: "Server Keep Alive"
        case .authenticationMethod: "Authentication Method"
        case .authenticationData: "Authentication Data"
        case .requestProblemInformation: "Request Problem Information"
        case .willDelayInterval: "Will Delay Interval"
        case .requestResponseInformation: "Request Response Information"
        case .responseInformation: "Response Information"
        case .serverReference: "Server Reference"
        case .reasonString: "Reason String"
        case .receiveMaximum: "Receive Maximum"
        case .topicAliasMaximum: "Topic Alias Maximum"
        case .topicAlias: "Topic Alias"
        case .maximumQoS: "Maximum QoS"
        case .retainAvailable: "Retain Available"
        case .userProperty: "User Property"
        case .maximumPacketSize: "Maximum Packet Size"
        case .wildcardSubscriptionAvailable: "Wildcard Subscription Available"
        case .subscriptionIdentifierAvailable: "Subscription Identifier Available"
        case .sharedSubscriptionAvailable: "Shared Subscription Available"
        }
    }
}

public enum MQTTPayloadFormat: UInt8, Sendable, Hashable {
    case unspecified = 0
    case utf8 = 1
}

public struct MQTTUserProperty: Sendable, Hashable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// One v5 property with its value. Ranges the spec restricts (a Receive Maximum of 0, a
/// Maximum QoS of 2, a Subscription Identifier of 0) are representable here; the decoder
/// refuses them on the wire and the encoder refuses to write them.
public enum MQTTProperty: Sendable, Equatable {
    case payloadFormatIndicator(MQTTPayloadFormat)
    case messageExpiryInterval(UInt32)
    case contentType(String)
    case responseTopic(String)
    case correlationData(ByteBuffer)
    /// 1 ... 268,435,455, written as a variable byte integer. May repeat in PUBLISH.
    case subscriptionIdentifier(UInt32)
    case sessionExpiryInterval(UInt32)
    case assignedClientIdentifier(String)
    case serverKeepAlive(UInt16)
    case authenticationMethod(String)
    case authenticationData(ByteBuffer)
    case requestProblemInformation(Bool)
    case willDelayInterval(UInt32)
    case requestResponseInformation(Bool)
    case responseInformation(String)
    case serverReference(String)
    case reasonString(String)
    case receiveMaximum(UInt16)
    case topicAliasMaximum(UInt16)
    case topicAlias(UInt16)
    /// 0 or 1 only: a server that supports QoS 2 leaves the property out.
    case maximumQoS(MQTTQoS)
    case retainAvailable(Bool)
    /// Repeatable everywhere it is allowed; order is kept.
    case userProperty(MQTTUserProperty)
    case maximumPacketSize(UInt32)
    case wildcardSubscriptionAvailable(Bool)
    case subscriptionIdentifierAvailable(Bool)
    case sharedSubscriptionAvailable(Bool)

    public var identifier: MQTTPropertyIdentifier {
        switch self {
        case .payloadFormatIndicator: .payloadFormatIndicator
        case .messageExpiryInterval: .messageExpiryInterval
        case .contentType: .contentType
        case .responseTopic: .responseTopic
        case .correlationData: .correlationData
        case .subscriptionIdentifier: .subscriptionIdentifier
        case .sessionExpiryInterval: .sessionExpiryInterval
        case .assignedClientIdentifier: .assignedClientIdentifier
        case .serverKeepAlive: .serverKeepAlive
        case .authenticationMethod: .authenticationMethod
        case .authenticationData: .authenticationData
        case .requestProblemInformation: .requestProblemInformation
        case .willDelayInterval: .willDelayInterval
        case .requestResponseInformation: .requestResponseInformation
        case .responseInformation: .responseInformation
        case .serverReference: .serverReference
        case .reasonString: .reasonString
        case .receiveMaximum: .receiveMaximum
        case .topicAliasMaximum: .topicAliasMaximum
        case .topicAlias: .topicAlias
        case .maximumQoS: .maximumQoS
        case .retainAvailable: .retainAvailable
        case .userProperty: .userProperty
        case .maximumPacketSize: .maximumPacketSize
        case .wildcardSubscriptionAvailable: .wildcardSubscriptionAvailable
        case .subscriptionIdentifierAvailable: .subscriptionIdentifierAvailable
        case .sharedSubscriptionAvailable: .sharedSubscriptionAvailable
        }
    }
}

/// The properties of one packet (or of a CONNECT's will), in wire order. An ordered list
/// rather than a struct of optionals keeps packets small and copies cheap (most packets carry
/// none, and an empty array allocates nothing), keeps user properties in order, and makes a
/// decode/encode round trip byte-exact. The typed accessors below read and write the list.
public struct MQTTProperties: Sendable, Equatable, RandomAccessCollection, ExpressibleByArrayLiteral {
    public var list: [MQTTProperty]

    @inlinable public init() { list = [] }
    @inlinable public init(_ list: [MQTTProperty]) { self.list = list }
    @inlinable public init(arrayLiteral elements: MQTTProperty...) { list = elements }

    @inlinable public var startIndex: Int { list.startIndex }
    @inlinable public var endIndex: Int { list.endIndex }
    @inlinable public subscript(position: Int) -> MQTTProperty { list[position] }

    public mutating func append(_ property: MQTTProperty) { list.append(property) }

    public func contains(_ identifier: MQTTPropertyIdentifier) -> Bool {
        list.contains { $0.identifier == identifier }
    }

    /// Removes every property with this identifier, e.g. Reason String and User Property when
    /// a packet would exceed the peer's Maximum Packet Size (MQTT-3.1.2-25).
    public mutating func removeAll(_ identifier: MQTTPropertyIdentifier) {
        list.removeAll { $0.identifier == identifier }
    }

    private func first<T>(_ extract: (MQTTProperty) -> T?) -> T? {
        for property in list {
            if let value = extract(property) { return value }
        }
        return nil
    }

    /// Replaces the property in place (keeping wire order), appends it, or removes it for nil.
    private mutating func set(_ identifier: MQTTPropertyIdentifier, _ property: MQTTProperty?) {
        if let index = list.firstIndex(where: { $0.identifier == identifier }) {
            if let property {
                list[index] = property
                let rest = list[(index + 1)...].filter { $0.identifier != identifier }
                list.replaceSubrange((index + 1)..., with: rest)
            } else {
                list.removeAll { $0.identifier == identifier }
            }
        } else if let property {
            list.append(property)
        }
    }

    public var payloadFormatIndicator: MQTTPayloadFormat? {
        get { first { if case .payloadFormatIndicator(let v) = $0 { v } else { nil } } }
        set { set(.payloadFormatIndicator, newValue.map { .payloadFormatIndicator($0) }) }
    }
    public var messageExpiryInterval: UInt32? {
        get { first { if case .messageExpiryInterval(let v) = $0 { v } else { nil } } }
        set { set(.messageExpiryInterval, newValue.map { .messageExpiryInterval($0) }) }
    }
    public var contentType: String? {
        get { first { if case .contentType(let v) = $0 { v } else { nil } } }
        set { set(.contentType, newValue.map { .contentType($0) }) }
    }
    public var responseTopic: String? {
        get { first { if case .responseTopic(let v) = $0 { v } else { nil } } }
        set { set(.responseTopic, newValue.map { .responseTopic($0) }) }
    }
    public var correlationData: ByteBuffer? {
        get { first { if case .correlationData(let v) = $0 { v } else { nil } } }
        set { set(.correlationData, newValue.map { .correlationData($0) }) }
    }
    /// Every Subscription Identifier, in order (a PUBLISH carries one per matching subscription).
    public var subscriptionIdentifiers: [UInt32] {
        get { list.compactMap { if case .subscriptionIdentifier(let v) = $0 { v } else { nil } } }
        set {
            removeAll(.subscriptionIdentifier)
            list.append(contentsOf: newValue.map { .subscriptionIdentifier($0) })
        }
    }
    public var sessionExpiryInterval: UInt32? {
        get { first { if case .sessionExpiryInterval(let v) = $0 { v } else { nil } } }
        set { set(.sessionExpiryInterval, newValue.map { .sessionExpiryInterval($0) }) }
    }
    public var assignedClientIdentifier: String? {
        get { first { if case .assignedClientIdentifier(let v) = $0 { v } else { nil } } }
        set { set(.assignedClientIdentifier, newValue.map { .assignedClientIdentifier($0) }) }
    }
    public var serverKeepAlive: UInt16? {
        get { first { if case .serverKeepAlive(let v) = $0 { v } else { nil } } }
        set { set(.serverKeepAlive, newValue.map { .serverKeepAlive($0) }) }
    }
    public var authenticationMethod: String? {
        get { first { if case .authenticationMethod(let v) = $0 { v } else { nil } } }
        set { set(.authenticationMethod, newValue.map { .authenticationMethod($0) }) }
    }
    public var authenticationData: ByteBuffer? {
        get { first { if case .authenticationData(let v) = $0 { v } else { nil } } }
        set { set(.authenticationData, newValue.map { .authenticationData($0) }) }
    }
    public var requestProblemInformation: Bool? {
        get { first { if case .requestProblemInformation(let v) = $0 { v } else { nil } } }
        set { set(.requestProblemInformation, newValue.map { .requestProblemInformation($0) }) }
    }
    public var willDelayInterval: UInt32? {
        get { first { if case .willDelayInterval(let v) = $0 { v } else { nil } } }
        set { set(.willDelayInterval, newValue.map { .willDelayInterval($0) }) }
    }
    public var requestResponseInformation: Bool? {
        get { first { if case .requestResponseInformation(let v) = $0 { v } else { nil } } }
        set { set(.requestResponseInformation, newValue.map { .requestResponseInformation($0) }) }
    }
    public var responseInformation: String? {
        get { first { if case .responseInformation(let v) = $0 { v } else { nil } } }
        set { set(.responseInformation, newValue.map { .responseInformation($0) }) }
    }
    public var serverReference: String? {
        get { first { if case .serverReference(let v) = $0 { v } else { nil } } }
        set { set(.serverReference, newValue.map { .serverReference($0) }) }
    }
    public var reasonString: String? {
        get { first { if case .reasonString(let v) = $0 { v } else { nil } } }
        set { set(.reasonString, newValue.map { .reasonString($0) }) }
    }
    public var receiveMaximum: UInt16? {
        get { first { if case .receiveMaximum(let v) = $0 { v } else { nil } } }
        set { set(.receiveMaximum, newValue.map { .receiveMaximum($0) }) }
    }
    public var topicAliasMaximum: UInt16? {
        get { first { if case .topicAliasMaximum(let v) = $0 { v } else { nil } } }
        set { set(.topicAliasMaximum, newValue.map { .topicAliasMaximum($0) }) }
    }
    public var topicAlias: UInt16? {
        get { first { if case .topicAlias(let v) = $0 { v } else { nil } } }
        set { set(.topicAlias, newValue.map { .topicAlias($0) }) }
    }
    public var maximumQoS: MQTTQoS? {
        get { first { if case .maximumQoS(let v) = $0 { v } else { nil } } }
        set { set(.maximumQoS, newValue.map { .maximumQoS($0) }) }
    }
    public var retainAvailable: Bool? {
        get { first { if case .retainAvailable(let v) = $0 { v } else { nil } } }
        set { set(.retainAvailable, newValue.map { .retainAvailable($0) }) }
    }
    /// Every User Property, in order.
    public var userProperties: [MQTTUserProperty] {
        get { list.compactMap { if case .userProperty(let v) = $0 { v } else { nil } } }
        set {
            removeAll(.userProperty)
            list.append(contentsOf: newValue.map { .userProperty($0) })
        }
    }
    public var maximumPacketSize: UInt32? {
        get { first { if case .maximumPacketSize(let v) = $0 { v } else { nil } } }
        set { set(.maximumPacketSize, newValue.map { .maximumPacketSize($0) }) }
    }
    public var wildcardSubscriptionAvailable: Bool? {
        get { first { if case .wildcardSubscriptionAvailable(let v) = $0 { v } else { nil } } }
        set { set(.wildcardSubscriptionAvailable, newValue.map { .wildcardSubscriptionAvailable($0) }) }
    }
    public var subscriptionIdentifierAvailable: Bool? {
        get { first { if case .subscriptionIdentifierAvailable(let v) = $0 { v } else { nil } } }
        set { set(.subscriptionIdentifierAvailable, newValue.map { .subscriptionIdentifierAvailable($0) }) }
    }
    public var sharedSubscriptionAvailable: Bool? {
        get { first { if case .sharedSubscriptionAvailable(let v) = $0 { v } else { nil } } }
        set { set(.sharedSubscriptionAvailable, newValue.map { .sharedSubscriptionAvailable($0) }) }
    }
}

/// Where a property list stands; each place allows its own identifiers (table in section
/// 2.2.2.2). A will's properties are a place of their own inside CONNECT.
enum PropertyPlace: Sendable {
    case connect, will, connack, publish, publishResponse, subscribe, suback, unsubscribe, unsuback, disconnect, auth

    var allowed: UInt64 {
        typealias P = MQTTPropertyIdentifier
        let user = P.userProperty.bit
        let reason = P.reasonString.bit | user
        switch self {
        case .connect:
            return user | P.sessionExpiryInterval.bit | P.authenticationMethod.bit | P.authenticationData.bit
                | P.requestProblemInformation.bit | P.requestResponseInformation.bit | P.receiveMaximum.bit
                | P.topicAliasMaximum.bit | P.maximumPacketSize.bit
        case .will:
            return user | P.willDelayInterval.bit | P.payloadFormatIndicator.bit | P.messageExpiryInterval.bit
                | P.contentType.bit | P.responseTopic.bit | P.correlationData.bit
        case .connack:
            return reason | P.sessionExpiryInterval.bit | P.assignedClientIdentifier.bit | P.serverKeepAlive.bit
                | P.authenticationMethod.bit | P.authenticationData.bit | P.responseInformation.bit
                | P.serverReference.bit | P.receiveMaximum.bit | P.topicAliasMaximum.bit | P.maximumQoS.bit
                | P.retainAvailable.bit | P.maximumPacketSize.bit | P.wildcardSubscriptionAvailable.bit
                | P.subscriptionIdentifierAvailable.bit | P.sharedSubscriptionAvailable.bit
        case .publish:
            return user | P.payloadFormatIndicator.bit | P.messageExpiryInterval.bit | P.contentType.bit
                | P.responseTopic.bit | P.correlationData.bit | P.subscriptionIdentifier.bit | P.topicAlias.bit
        case .publishResponse, .suback, .unsuback:
            return reason
        case .subscribe:
            return user | P.subscriptionIdentifier.bit
        case .unsubscribe:
            return user
        case .disconnect:
            return reason | P.sessionExpiryInterval.bit | P.serverReference.bit
        case .auth:
            return reason | P.authenticationMethod.bit | P.authenticationData.bit
        }
    }

    /// Identifiers that may appear more than once here: User Property always, Subscription
    /// Identifier only in PUBLISH (one per matching subscription); in SUBSCRIBE it is unique.
    var repeatable: UInt64 {
        self == .publish
            ? MQTTPropertyIdentifier.userProperty.bit | MQTTPropertyIdentifier.subscriptionIdentifier.bit
            : MQTTPropertyIdentifier.userProperty.bit
    }
}

// MARK: - Wire format

extension PacketReader {
    /// Reads a property list; it stops exactly at its declared length, so a value that runs
    /// past it is a truncation, not a read into the next field.
    mutating func readProperties(_ place: PropertyPlace) throws(MQTTDecodingError) -> MQTTProperties {
        let length = try readVariableByteInteger("property length")
        if length == 0 { return MQTTProperties() }
        guard let slice = buffer.readSlice(length: Int(length)) else { throw failure(.truncated("properties")) }
        var reader = PacketReader(slice, type: type, version: version)
        var list: [MQTTProperty] = []
        var seen: UInt64 = 0
        let allowed = place.allowed, repeatable = place.repeatable
        while reader.buffer.readableBytes > 0 {
            let raw = try reader.readByte("property identifier")
            guard let identifier = MQTTPropertyIdentifier(rawValue: raw) else {
                throw failure(.unknownProperty(raw))
            }
            let bit = identifier.bit
            guard allowed & bit != 0 else { throw failure(.propertyNotAllowed(identifier)) }
            guard seen & bit == 0 || repeatable & bit != 0 else { throw failure(.duplicateProperty(identifier)) }
            seen |= bit
            list.append(try reader.readPropertyValue(identifier))
        }
        // The spec says so for CONNECT (3.1.2.11.10); CONNACK and AUTH follow the same exchange.
        if seen & MQTTPropertyIdentifier.authenticationData.bit != 0,
            seen & MQTTPropertyIdentifier.authenticationMethod.bit == 0
        {
            throw failure(.authenticationDataWithoutMethod)
        }
        return MQTTProperties(list)
    }

    mutating func readPropertyValue(_ id: MQTTPropertyIdentifier) throws(MQTTDecodingError) -> MQTTProperty {
        let field = "property value"
        switch id {
        case .payloadFormatIndicator:
            let raw = try readByte(field)
            guard let format = MQTTPayloadFormat(rawValue: raw) else {
                throw failure(.invalidPropertyValue(id, UInt32(raw)))
            }
            return .payloadFormatIndicator(format)
        case .messageExpiryInterval: return .messageExpiryInterval(try readUInt32(field))
        case .contentType: return .contentType(try readString("Content Type"))
        case .responseTopic: return .responseTopic(try readString("Response Topic"))
        case .correlationData: return .correlationData(try readBinary("Correlation Data"))
        case .subscriptionIdentifier:
            let value = try readVariableByteInteger(field)
            guard value != 0 else { throw failure(.invalidPropertyValue(id, 0)) }
            return .subscriptionIdentifier(value)
        case .sessionExpiryInterval: return .sessionExpiryInterval(try readUInt32(field))
        case .assignedClientIdentifier: return .assignedClientIdentifier(try readString("Assigned Client Identifier"))
        case .serverKeepAlive: return .serverKeepAlive(try readUInt16(field))
        case .authenticationMethod: return .authenticationMethod(try readString("Authentication Method"))
        case .authenticationData: return .authenticationData(try readBinary("Authentication Data"))
        case .requestProblemInformation: return .requestProblemInformation(try readBoolean(id))
        case .willDelayInterval: return .willDelayInterval(try readUInt32(field))
        case .requestResponseInformation: return .requestResponseInformation(try readBoolean(id))
        case .responseInformation: return .responseInformation(try readString("Response Information"))
        case .serverReference: return .serverReference(try readString("Server Reference"))
        case .reasonString: return .reasonString(try readString("Reason String"))
        case .receiveMaximum: return .receiveMaximum(try readNonZeroUInt16(id))
        case .topicAliasMaximum: return .topicAliasMaximum(try readUInt16(field))
        case .topicAlias: return .topicAlias(try readNonZeroUInt16(id))
        case .maximumQoS:
            let raw = try readByte(field)
            guard raw <= 1 else { throw failure(.invalidPropertyValue(id, UInt32(raw))) }
            return .maximumQoS(raw == 0 ? .atMostOnce : .atLeastOnce)
        case .retainAvailable: return .retainAvailable(try readBoolean(id))
        case .userProperty:
            let name = try readString("User Property name")
            let value = try readString("User Property value")
            return .userProperty(MQTTUserProperty(name: name, value: value))
        case .maximumPacketSize:
            let value = try readUInt32(field)
            guard value != 0 else { throw failure(.invalidPropertyValue(id, 0)) }
            return .maximumPacketSize(value)
        case .wildcardSubscriptionAvailable: return .wildcardSubscriptionAvailable(try readBoolean(id))
        case .subscriptionIdentifierAvailable: return .subscriptionIdentifierAvailable(try readBoolean(id))
        case .sharedSubscriptionAvailable: return .sharedSubscriptionAvailable(try readBoolean(id))
        }
    }

    mutating func readBoolean(_ id: MQTTPropertyIdentifier) throws(MQTTDecodingError) -> Bool {
        let raw = try readByte("property value")
        guard raw <= 1 else { throw failure(.invalidPropertyValue(id, UInt32(raw))) }
        return raw == 1
    }

    mutating func readNonZeroUInt16(_ id: MQTTPropertyIdentifier) throws(MQTTDecodingError) -> UInt16 {
        let value = try readUInt16("property value")
        guard value != 0 else { throw failure(.invalidPropertyValue(id, 0)) }
        return value
    }
}

extension MQTTProperties {
    /// Checks what the decoder would refuse and returns the size of the property list's
    /// content (without its length prefix).
    func encodedContentSize(_ place: PropertyPlace, _ type: MQTTPacketType) throws(MQTTEncodingError) -> Int {
        var size = 0
        var seen: UInt64 = 0
        let allowed = place.allowed, repeatable = place.repeatable
        for property in list {
            let id = property.identifier
            let bit = id.bit
            guard allowed & bit != 0 else { throw MQTTEncodingError(.propertyNotAllowed(id, type)) }
            guard seen & bit == 0 || repeatable & bit != 0 else {
                throw MQTTEncodingError(.duplicateProperty(id, type))
            }
            seen |= bit
            size += 1
            switch property {
            case .payloadFormatIndicator, .requestProblemInformation, .requestResponseInformation, .retainAvailable,
                .wildcardSubscriptionAvailable, .subscriptionIdentifierAvailable, .sharedSubscriptionAvailable:
                size += 1
            case .maximumQoS(let qos):
                guard qos != .exactlyOnce else { throw MQTTEncodingError(.invalidPropertyValue(id)) }
                size += 1
            case .serverKeepAlive, .topicAliasMaximum:
                size += 2
            case .receiveMaximum(let value), .topicAlias(let value):
                guard value != 0 else { throw MQTTEncodingError(.invalidPropertyValue(id)) }
                size += 2
            case .messageExpiryInterval, .sessionExpiryInterval, .willDelayInterval:
                size += 4
            case .maximumPacketSize(let value):
                guard value != 0 else { throw MQTTEncodingError(.invalidPropertyValue(id)) }
                size += 4
            case .subscriptionIdentifier(let value):
                guard value != 0, value <= maximumVariableByteInteger else {
                    throw MQTTEncodingError(.invalidPropertyValue(id))
                }
                size += variableByteIntegerSize(Int(value))
            case .contentType(let s), .responseTopic(let s), .assignedClientIdentifier(let s),
                .authenticationMethod(let s), .responseInformation(let s), .serverReference(let s),
                .reasonString(let s):
                size += try stringSize(s, field: id.description)
            case .correlationData(let b), .authenticationData(let b):
                size += try binarySize(b, field: id.description)
            case .userProperty(let pair):
                size += try stringSize(pair.name, field: "User Property name")
                size += try stringSize(pair.value, field: "User Property value")
            }
        }
        if seen & MQTTPropertyIdentifier.authenticationData.bit != 0,
            seen & MQTTPropertyIdentifier.authenticationMethod.bit == 0
        {
            throw MQTTEncodingError(.authenticationDataWithoutMethod)
        }
        return size
    }

    /// Writes the length prefix and the properties; `contentSize` comes from `encodedContentSize`.
    func write(contentSize: Int, to buffer: inout ByteBuffer) {
        buffer.writeVariableByteInteger(contentSize)
        for property in list {
            buffer.writeInteger(property.identifier.rawValue)
            switch property {
            case .payloadFormatIndicator(let format): buffer.writeInteger(format.rawValue)
            case .requestProblemInformation(let flag), .requestResponseInformation(let flag),
                .retainAvailable(let flag), .wildcardSubscriptionAvailable(let flag),
                .subscriptionIdentifierAvailable(let flag), .sharedSubscriptionAvailable(let flag):
                buffer.writeInteger(flag ? 1 : 0 as UInt8)
            case .maximumQoS(let qos): buffer.writeInteger(qos.rawValue)
            case .serverKeepAlive(let value), .topicAliasMaximum(let value), .receiveMaximum(let value),
                .topicAlias(let value):
                buffer.writeInteger(value)
            case .messageExpiryInterval(let value), .sessionExpiryInterval(let value),
                .willDelayInterval(let value), .maximumPacketSize(let value):
                buffer.writeInteger(value)
            case .subscriptionIdentifier(let value): buffer.writeVariableByteInteger(Int(value))
            case .contentType(let s), .responseTopic(let s), .assignedClientIdentifier(let s),
                .authenticationMethod(let s), .responseInformation(let s), .serverReference(let s),
                .reasonString(let s):
                buffer.writeMQTTString(s)
            case .correlationData(let b), .authenticationData(let b): buffer.writeMQTTBinary(b)
            case .userProperty(let pair):
                buffer.writeMQTTString(pair.name)
                buffer.writeMQTTString(pair.value)
            }
        }
    }
}
