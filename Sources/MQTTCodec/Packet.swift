/// One MQTT control packet of either version. Fields that only 5.0 has are empty (or
/// Success) for 3.1.1 and are left out when such a packet is encoded for 3.1.1.
public enum MQTTPacket: Sendable, Equatable {
    case connect(MQTTConnect)
    case connack(MQTTConnAck)
    case publish(MQTTPublish)
    case puback(MQTTPublishResponse)
    case pubrec(MQTTPublishResponse)
    case pubrel(MQTTPublishResponse)
    case pubcomp(MQTTPublishResponse)
    case subscribe(MQTTSubscribe)
    case suback(MQTTSubAck)
    case unsubscribe(MQTTUnsubscribe)
    case unsuback(MQTTUnsubAck)
    case pingreq
    case pingresp
    case disconnect(MQTTDisconnect)
    case auth(MQTTAuth)

    public var type: MQTTPacketType {
        switch self {
        case .connect: .connect
        case .connack: .connack
        case .publish: .publish
        case .puback: .puback
        case .pubrec: .pubrec
        case .pubrel: .pubrel
        case .pubcomp: .pubcomp
        case .subscribe: .subscribe
        case .suback: .suback
        case .unsubscribe: .unsubscribe
        case .unsuback: .unsuback
        case .pingreq: .pingreq
        case .pingresp: .pingresp
        case .disconnect: .disconnect
        case .auth: .auth
        }
    }
}

/// The reason codes one packet type may carry (section 2.4 and each packet's table), as a
/// bitmap: every defined code is below 0x20 or in 0x80..<0xC0, so two words hold a set.
struct ReasonCodes: Sendable {
    private let low: UInt64
    private let high: UInt64

    init(_ codes: [UInt8]) {
        var low: UInt64 = 0
        var high: UInt64 = 0
        for code in codes {
            if code < 0x40 { low |= 1 << UInt64(code) } else { high |= 1 << UInt64(code - 0x80) }
        }
        self.low = low
        self.high = high
    }

    func contains(_ code: MQTTReasonCode) -> Bool {
        switch code.rawValue {
        case ..<0x40: low & (1 << UInt64(code.rawValue)) != 0
        case 0x80..<0xC0: high & (1 << UInt64(code.rawValue - 0x80)) != 0
        default: false
        }
    }

    static let connack = ReasonCodes([
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99,
        0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ])
    static let pubackPubrec = ReasonCodes([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99])
    static let pubrelPubcomp = ReasonCodes([0x00, 0x92])
    static let suback = ReasonCodes([0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2])
    static let subackV3 = ReasonCodes([0x00, 0x01, 0x02, 0x80])
    static let unsuback = ReasonCodes([0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91])
    static let disconnect = ReasonCodes([
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96,
        0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ])
    static let auth = ReasonCodes([0x00, 0x18, 0x19])
}

/// What the encoder measured before writing: the remaining length and the content size of
/// each property list, so nothing is measured twice and nothing is written if measuring fails.
struct EncodingSizes {
    var body = 0
    var properties = 0
    /// The will's properties in CONNECT.
    var extraProperties = 0
}
