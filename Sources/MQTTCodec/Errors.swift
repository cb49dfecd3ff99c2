/// Why bytes from a peer are not an acceptable packet. It is a value, not a crash: the front
/// sends `reasonCode` (in a v5 CONNACK if the CONNECT was refused, else in a v5 DISCONNECT;
/// a 3.1.1 peer just loses the connection) and logs `description`.
public struct MQTTDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Problem: Sendable, Equatable {
        // 0x81 Malformed Packet: the bytes cannot be parsed as this packet.
        /// Type 0, or 15 (AUTH) on a 3.1.1 connection.
        case reservedPacketType(UInt8)
        /// The low nibble of the first byte is not what this packet type requires.
        case invalidFixedHeaderFlags(UInt8)
        /// A variable byte integer with a continuation bit on its fourth byte.
        case variableByteIntegerTooLong(String)
        /// A field declares more bytes than the packet has left.
        case truncated(String)
        /// Bytes left after the last field of a packet that has no payload to absorb them.
        case trailingBytes(Int)
        case invalidUTF8(String)
        /// U+0000 in a UTF-8 string (MQTT-1.5.4-2).
        case nullCharacter(String)
        /// Bit 0 of CONNECT's flags (MQTT-3.1.2-3).
        case reservedConnectFlagSet
        /// Will QoS or Will Retain set without the Will Flag (MQTT-3.1.2-11, -13).
        case willOptionsWithoutWill
        /// QoS 3 in PUBLISH's fixed header or in CONNECT's will flags.
        case invalidQoS
        /// DUP set on a QoS 0 PUBLISH (MQTT-3.3.1-2).
        case duplicateFlagWithQoS0
        /// `+` or `#` in a PUBLISH topic name (MQTT-3.3.2-2).
        case wildcardInTopicName
        /// CONNACK's acknowledge flags other than Session Present are set (MQTT-3.2.2-1).
        case invalidConnectAcknowledgeFlags(UInt8)
        /// The reserved bits of a subscription's options byte are set (MQTT-3.8.3-5).
        case reservedSubscriptionOptionBitsSet(UInt8)
        case unknownProperty(UInt8)
        /// A known property where this packet does not allow it (section 2.2.2.2).
        case propertyNotAllowed(MQTTPropertyIdentifier)

        // 0x82 Protocol Error: parsed, but the protocol does not allow it.
        /// A non-CONNECT packet before CONNECT (MQTT-3.1.0-1).
        case expectedConnect(MQTTPacketType)
        /// A property that may appear only once appeared again.
        case duplicateProperty(MQTTPropertyIdentifier)
        /// A property value outside its range (a boolean of 2, Receive Maximum 0, ...).
        case invalidPropertyValue(MQTTPropertyIdentifier, UInt32)
        case authenticationDataWithoutMethod
        /// A reason code this packet type does not define.
        case invalidReasonCode(UInt8)
        /// 3.1.1 forbids a password without a user name (MQTT-3.1.2-22); 5.0 allows it.
        case passwordWithoutUserName
        /// SUBSCRIBE, UNSUBSCRIBE and PUBLISH with QoS > 0 need a non-zero identifier.
        case zeroPacketIdentifier
        /// SUBSCRIBE or UNSUBSCRIBE without a topic filter, or SUBACK without a reason code.
        case emptyPayload
        /// A zero-length topic name without a Topic Alias (5.0) or at all (3.1.1).
        case emptyTopicName
        /// Maximum QoS 3 in a subscription's options.
        case invalidSubscriptionQoS
        /// Retain Handling 3 (section 3.8.3.1).
        case invalidRetainHandling
        /// No Local on a shared subscription (MQTT-3.8.3-4).
        case noLocalOnSharedSubscription

        // Others.
        /// 0x84: the protocol name or level in CONNECT is not one this codec speaks.
        case unsupportedProtocol(name: String, level: UInt8)
        /// 0x95: the packet would exceed the configured maximum, judged from its fixed header.
        case packetTooLarge(size: Int, maximum: Int)
        /// 0x99: Payload Format Indicator says UTF-8 but the payload is not.
        case payloadNotUTF8

        public var reasonCode: MQTTReasonCode {
            switch self {
            // MQTT-3.3.2-8: a Topic Alias of 0 is not permitted; 0x94 says which rule (as mosquitto).
            case .invalidPropertyValue(.topicAlias, _): .topicAliasInvalid
            case .reservedPacketType, .invalidFixedHeaderFlags, .variableByteIntegerTooLong, .truncated,
                .trailingBytes, .invalidUTF8, .nullCharacter, .reservedConnectFlagSet, .willOptionsWithoutWill,
                .invalidQoS, .duplicateFlagWithQoS0, .wildcardInTopicName, .invalidConnectAcknowledgeFlags,
                .reservedSubscriptionOptionBitsSet, .unknownProperty, .propertyNotAllowed:
                .malformedPacket
            case .expectedConnect, .duplicateProperty, .invalidPropertyValue, .authenticationDataWithoutMethod,
                .invalidReasonCode, .passwordWithoutUserName, .zeroPacketIdentifier, .emptyPayload, .emptyTopicName,
                .invalidSubscriptionQoS, .invalidRetainHandling, .noLocalOnSharedSubscription:
                .protocolError
            case .unsupportedProtocol: .unsupportedProtocolVersion
            case .packetTooLarge: .packetTooLarge
            case .payloadNotUTF8: .payloadFormatInvalid
            }
        }

        var text: String {
            switch self {
            case .reservedPacketType(let type): "reserved packet type \(type)"
            case .invalidFixedHeaderFlags(let flags): "fixed header flags 0x\(hex2(flags)) are not allowed"
            case .variableByteIntegerTooLong(let field): "\(field) is a variable byte integer longer than 4 bytes"
            case .truncated(let field): "\(field) runs past the end of the packet"
            case .trailingBytes(let count): "\(count) bytes after the last field"
            case .invalidUTF8(let field): "\(field) is not valid UTF-8"
            case .nullCharacter(let field): "\(field) contains U+0000"
            case .reservedConnectFlagSet: "reserved bit 0 of the connect flags is set"
            case .willOptionsWithoutWill: "will QoS or will retain is set without the will flag"
            case .invalidQoS: "QoS 3"
            case .duplicateFlagWithQoS0: "DUP is set on a QoS 0 message"
            case .wildcardInTopicName: "topic name contains a wildcard"
            case .invalidConnectAcknowledgeFlags(let flags): "reserved acknowledge flags set: 0x\(hex2(flags))"
            case .reservedSubscriptionOptionBitsSet(let options):
                "reserved bits of subscription options 0x\(hex2(options)) are set"
            case .unknownProperty(let id): "unknown property identifier 0x\(hex2(id))"
            case .propertyNotAllowed(let id): "property \(id) is not allowed here"
            case .expectedConnect(let type): "\(type) before CONNECT"
            case .duplicateProperty(let id): "property \(id) appears more than once"
            case .invalidPropertyValue(let id, let value): "property \(id) has the invalid value \(value)"
            case .authenticationDataWithoutMethod: "Authentication Data without Authentication Method"
            case .invalidReasonCode(let code): "reason code 0x\(hex2(code)) is not defined for this packet"
            case .passwordWithoutUserName: "password without user name"
            case .zeroPacketIdentifier: "packet identifier 0"
            case .emptyPayload: "empty payload"
            case .emptyTopicName: "empty topic name"
            case .invalidSubscriptionQoS: "subscription with maximum QoS 3"
            case .invalidRetainHandling: "retain handling 3"
            case .noLocalOnSharedSubscription: "No Local on a shared subscription"
            case .unsupportedProtocol(let name, let level): "unsupported protocol \"\(name)\" level \(level)"
            case .packetTooLarge(let size, let maximum): "packet of \(size) bytes exceeds the maximum of \(maximum)"
            case .payloadNotUTF8: "payload is marked UTF-8 but is not"
            }
        }
    }

    public var problem: Problem
    /// Known once the first byte has been read.
    public var packetType: MQTTPacketType?
    /// The version to answer in: the connection's, or for CONNECT the one it asked for
    /// (nil if the CONNECT failed before its protocol level was read, or named an unknown one).
    public var protocolVersion: MQTTProtocolVersion?

    public init(_ problem: Problem, packetType: MQTTPacketType?, protocolVersion: MQTTProtocolVersion?) {
        self.problem = problem
        self.packetType = packetType
        self.protocolVersion = protocolVersion
    }

    /// The v5 reason code to close with (0x81, 0x82, 0x84, 0x95 or 0x99).
    public var reasonCode: MQTTReasonCode { problem.reasonCode }

    /// One line for the log, e.g. "PUBLISH: Malformed Packet: topic name contains a wildcard".
    public var description: String {
        let packet = packetType.map { "\($0): " } ?? ""
        return "\(packet)\(reasonCode.name): \(problem.text)"
    }
}

/// Why a packet value cannot be written: the caller built something the wire cannot carry or
/// that a strict peer would refuse. Nothing has been written when this is thrown.
public struct MQTTEncodingError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Problem: Sendable, Equatable {
        /// AUTH on a 3.1.1 connection.
        case packetNotInVersion(MQTTPacketType, MQTTProtocolVersion)
        /// Over 65,535 bytes of UTF-8.
        case stringTooLong(String)
        /// Over 65,535 bytes.
        case binaryTooLong(String)
        /// Remaining length over 268,435,455.
        case packetTooLarge(Int)
        case propertyNotAllowed(MQTTPropertyIdentifier, MQTTPacketType)
        case duplicateProperty(MQTTPropertyIdentifier, MQTTPacketType)
        case invalidPropertyValue(MQTTPropertyIdentifier)
        case authenticationDataWithoutMethod
        /// QoS > 0 PUBLISH, SUBSCRIBE and UNSUBSCRIBE need an identifier of 1...65535; QoS 0 has none.
        case invalidPacketIdentifier
        /// SUBSCRIBE, UNSUBSCRIBE or SUBACK with nothing in it.
        case emptyPayload
        /// 3.1.1 cannot send a password without a user name.
        case passwordWithoutUserName
        /// A reason code the target version cannot express (e.g. a SUBACK code of 0x01 given as QoS 2).
        case invalidReasonCode(MQTTReasonCode)
        /// A DUP flag on QoS 0, or a wildcard in a PUBLISH topic name.
        case invalidField(String)
    }

    public var problem: Problem

    public init(_ problem: Problem) { self.problem = problem }

    public var description: String {
        switch problem {
        case .packetNotInVersion(let type, let version): "\(type) does not exist in \(version)"
        case .stringTooLong(let field): "\(field) is longer than 65535 bytes"
        case .binaryTooLong(let field): "\(field) is longer than 65535 bytes"
        case .packetTooLarge(let length): "remaining length \(length) exceeds 268435455"
        case .propertyNotAllowed(let id, let type): "property \(id) is not allowed in \(type)"
        case .duplicateProperty(let id, let type): "property \(id) appears more than once in \(type)"
        case .invalidPropertyValue(let id): "property \(id) has a value outside its range"
        case .authenticationDataWithoutMethod: "Authentication Data without Authentication Method"
        case .invalidPacketIdentifier: "packet identifier missing, zero, or present on QoS 0"
        case .emptyPayload: "packet needs at least one entry"
        case .passwordWithoutUserName: "MQTT 3.1.1 cannot carry a password without a user name"
        case .invalidReasonCode(let code): "reason code \(code) cannot be sent in this packet or version"
        case .invalidField(let field): "invalid \(field)"
        }
    }
}
