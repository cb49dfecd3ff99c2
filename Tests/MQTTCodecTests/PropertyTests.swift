import MQTTCodec
import NIOCore
import Testing

// Every v5 property against every place a property list stands, in both directions. The
// bytes and the table of allowed places are written out here from the specification
// (sections 2.2.2.2 and 3.x.2.2), independently of the codec's own tables.

enum Place: CaseIterable, Sendable {
    case connect, will, connack, publish, puback, pubrec, pubrel, pubcomp, subscribe, suback, unsubscribe, unsuback
    case disconnect, auth

    var packetType: MQTTPacketType {
        switch self {
        case .connect, .will: .connect
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
        case .disconnect: .disconnect
        case .auth: .auth
        }
    }

    /// A minimal v5 packet whose only property list is `properties`.
    func packet(_ properties: MQTTProperties) -> MQTTPacket {
        switch self {
        case .connect:
            .connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "c", properties: properties))
        case .will:
            .connect(
                MQTTConnect(
                    protocolVersion: .mqtt5, clientIdentifier: "c",
                    will: MQTTWill(topic: "w", payload: buffer("x"), properties: properties)))
        case .connack: .connack(MQTTConnAck(properties: properties))
        case .publish: .publish(MQTTPublish(topicName: "t", payload: buffer("p"), properties: properties))
        case .puback: .puback(MQTTPublishResponse(packetIdentifier: 1, properties: properties))
        case .pubrec: .pubrec(MQTTPublishResponse(packetIdentifier: 1, properties: properties))
        case .pubrel: .pubrel(MQTTPublishResponse(packetIdentifier: 1, properties: properties))
        case .pubcomp: .pubcomp(MQTTPublishResponse(packetIdentifier: 1, properties: properties))
        case .subscribe:
            .subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "f")], properties: properties))
        case .suback: .suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS0], properties: properties))
        case .unsubscribe: .unsubscribe(MQTTUnsubscribe(packetIdentifier: 1, topicFilters: ["f"], properties: properties))
        case .unsuback: .unsuback(MQTTUnsubAck(packetIdentifier: 1, reasonCodes: [.success], properties: properties))
        case .disconnect: .disconnect(MQTTDisconnect(properties: properties))
        case .auth: .auth(MQTTAuth(properties: properties))
        }
    }

    /// The same packet written out by hand around the given property bytes.
    func bytes(_ properties: [UInt8]) -> [UInt8] {
        let list = variableByteInteger(properties.count) + properties
        switch self {
        case .connect: return frame(0x10, mqttString("MQTT") + [5, 0x02, 0, 60] + list + mqttString("c"))
        case .will:
            return frame(
                0x10, mqttString("MQTT") + [5, 0x06, 0, 60, 0] + mqttString("c") + list + mqttString("w") + mqttString("x"))
        case .connack: return frame(0x20, [0, 0] + list)
        case .publish: return frame(0x30, mqttString("t") + list + [UInt8(ascii: "p")])
        case .puback: return frame(0x40, [0, 1, 0] + list)
        case .pubrec: return frame(0x50, [0, 1, 0] + list)
        case .pubrel: return frame(0x62, [0, 1, 0] + list)
        case .pubcomp: return frame(0x70, [0, 1, 0] + list)
        case .subscribe: return frame(0x82, [0, 1] + list + mqttString("f") + [0])
        case .suback: return frame(0x90, [0, 1] + list + [0])
        case .unsubscribe: return frame(0xA2, [0, 1] + list + mqttString("f"))
        case .unsuback: return frame(0xB0, [0, 1] + list + [0])
        case .disconnect: return frame(0xE0, [0] + list)
        case .auth: return frame(0xF0, [0] + list)
        }
    }

    var decodeVersion: MQTTProtocolVersion? { packetType == .connect ? nil : .mqtt5 }
}

/// The specification's table of where each property may stand.
let allowedPlaces: [MQTTPropertyIdentifier: Set<Place>] = [
    .payloadFormatIndicator: [.publish, .will],
    .messageExpiryInterval: [.publish, .will],
    .contentType: [.publish, .will],
    .responseTopic: [.publish, .will],
    .correlationData: [.publish, .will],
    .subscriptionIdentifier: [.publish, .subscribe],
    .sessionExpiryInterval: [.connect, .connack, .disconnect],
    .assignedClientIdentifier: [.connack],
    .serverKeepAlive: [.connack],
    .authenticationMethod: [.connect, .connack, .auth],
    .authenticationData: [.connect, .connack, .auth],
    .requestProblemInformation: [.connect],
    .willDelayInterval: [.will],
    .requestResponseInformation: [.connect],
    .responseInformation: [.connack],
    .serverReference: [.connack, .disconnect],
    .reasonString: [.connack, .puback, .pubrec, .pubrel, .pubcomp, .suback, .unsuback, .disconnect, .auth],
    .receiveMaximum: [.connect, .connack],
    .topicAliasMaximum: [.connect, .connack],
    .topicAlias: [.publish],
    .maximumQoS: [.connack],
    .retainAvailable: [.connack],
    .userProperty: Set(Place.allCases),
    .maximumPacketSize: [.connect, .connack],
    .wildcardSubscriptionAvailable: [.connack],
    .subscriptionIdentifierAvailable: [.connack],
    .sharedSubscriptionAvailable: [.connack],
]

struct PropertySample: Sendable, CustomTestStringConvertible {
    /// The property under test is the last; Authentication Data brings its method along.
    let properties: [MQTTProperty]
    let bytes: [UInt8]

    init(_ properties: [MQTTProperty], _ bytes: [UInt8]) {
        self.properties = properties
        self.bytes = bytes
    }

    var identifier: MQTTPropertyIdentifier { properties.last!.identifier }
    var testDescription: String { identifier.description }
}

let propertySamples: [PropertySample] = [
    PropertySample([.payloadFormatIndicator(.utf8)], [0x01, 0x01]),
    PropertySample([.messageExpiryInterval(0x0102_0304)], [0x02, 0x01, 0x02, 0x03, 0x04]),
    PropertySample([.contentType("json")], [0x03] + mqttString("json")),
    PropertySample([.responseTopic("r/1")], [0x08] + mqttString("r/1")),
    PropertySample([.correlationData(buffer([0xDE, 0xAD]))], [0x09, 0x00, 0x02, 0xDE, 0xAD]),
    PropertySample([.subscriptionIdentifier(200)], [0x0B, 0xC8, 0x01]),
    PropertySample([.sessionExpiryInterval(0xFFFF_FFFF)], [0x11, 0xFF, 0xFF, 0xFF, 0xFF]),
    PropertySample([.assignedClientIdentifier("auto")], [0x12] + mqttString("auto")),
    PropertySample([.serverKeepAlive(0x1234)], [0x13, 0x12, 0x34]),
    PropertySample([.authenticationMethod("PLAIN")], [0x15] + mqttString("PLAIN")),
    PropertySample(
        [.authenticationMethod("PLAIN"), .authenticationData(buffer([0x00]))],
        [0x15] + mqttString("PLAIN") + [0x16, 0x00, 0x01, 0x00]),
    PropertySample([.requestProblemInformation(false)], [0x17, 0x00]),
    PropertySample([.willDelayInterval(60)], [0x18, 0x00, 0x00, 0x00, 0x3C]),
    PropertySample([.requestResponseInformation(true)], [0x19, 0x01]),
    PropertySample([.responseInformation("resp")], [0x1A] + mqttString("resp")),
    PropertySample([.serverReference("srv")], [0x1C] + mqttString("srv")),
    PropertySample([.reasonString("why")], [0x1F] + mqttString("why")),
    PropertySample([.receiveMaximum(1)], [0x21, 0x00, 0x01]),
    PropertySample([.topicAliasMaximum(0)], [0x22, 0x00, 0x00]),
    PropertySample([.topicAlias(0xFFFF)], [0x23, 0xFF, 0xFF]),
    PropertySample([.maximumQoS(.atMostOnce)], [0x24, 0x00]),
    PropertySample([.retainAvailable(true)], [0x25, 0x01]),
    PropertySample(
        [.userProperty(MQTTUserProperty(name: "k", value: "v"))], [0x26] + mqttString("k") + mqttString("v")),
    PropertySample([.maximumPacketSize(1024)], [0x27, 0x00, 0x00, 0x04, 0x00]),
    PropertySample([.wildcardSubscriptionAvailable(false)], [0x28, 0x00]),
    PropertySample([.subscriptionIdentifierAvailable(true)], [0x29, 0x01]),
    PropertySample([.sharedSubscriptionAvailable(true)], [0x2A, 0x01]),
]

@Suite struct PropertyTests {
    @Test func samplesCoverEveryProperty() {
        #expect(Set(propertySamples.map(\.identifier)) == Set(MQTTPropertyIdentifier.allCases))
        #expect(Set(allowedPlaces.keys) == Set(MQTTPropertyIdentifier.allCases))
    }

    /// Where allowed: the hand-written bytes decode to the value and the value encodes to
    /// them. Elsewhere: 0x81 on decoding (section 2.2.2.2), and the encoder refuses.
    @Test(arguments: propertySamples)
    func everyPropertyInEveryPlace(sample: PropertySample) throws {
        for place in Place.allCases {
            let packet = place.packet(MQTTProperties(sample.properties))
            let wire = place.bytes(sample.bytes)
            let forbidden = sample.properties.first { !allowedPlaces[$0.identifier]!.contains(place) }
            if let forbidden {
                let error = decodingProblem(wire, place.decodeVersion)
                #expect(error?.problem == .propertyNotAllowed(forbidden.identifier), "\(place)")
                #expect(error?.reasonCode == .malformedPacket)
                #expect(throws: MQTTEncodingError(.propertyNotAllowed(forbidden.identifier, place.packetType))) {
                    try encode(packet, .mqtt5)
                }
            } else {
                #expect(decode(wire, place.decodeVersion) == .packet(packet), "\(place)")
                #expect(try encode(packet, .mqtt5) == wire, "\(place)")
            }
        }
    }

    /// Twice where it may appear once is a Protocol Error; User Property may always repeat,
    /// Subscription Identifier in PUBLISH only.
    @Test(arguments: propertySamples)
    func duplicates(sample: PropertySample) throws {
        let identifier = sample.identifier
        let last = sample.bytes.count - (sample.properties.count == 2 ? 4 : 0)  // just the data, not its method
        let single = sample.properties.count == 2 ? Array(sample.bytes[(last)...]) : sample.bytes
        for place in Place.allCases where allowedPlaces[identifier]!.contains(place) {
            let wire = place.bytes(sample.bytes + single)
            let repeatable = identifier == .userProperty || (identifier == .subscriptionIdentifier && place == .publish)
            if repeatable {
                let packet = place.packet(MQTTProperties(sample.properties + [sample.properties.last!]))
                #expect(decode(wire, place.decodeVersion) == .packet(packet))
                #expect(try encode(packet, .mqtt5) == wire)
            } else {
                let error = decodingProblem(wire, place.decodeVersion)
                #expect(error?.problem == .duplicateProperty(identifier), "\(place)")
                #expect(error?.reasonCode == .protocolError)
                let packet = place.packet(MQTTProperties(sample.properties + [sample.properties.last!]))
                #expect(throws: MQTTEncodingError(.duplicateProperty(identifier, place.packetType))) {
                    try encode(packet, .mqtt5)
                }
            }
        }
    }

    @Test func valuesOutsideTheirRange() {
        let cases: [(Place, [UInt8], MQTTDecodingError.Problem)] = [
            (.publish, [0x01, 0x02], .invalidPropertyValue(.payloadFormatIndicator, 2)),
            (.publish, [0x0B, 0x00], .invalidPropertyValue(.subscriptionIdentifier, 0)),
            (.subscribe, [0x0B, 0x80, 0x00], .invalidPropertyValue(.subscriptionIdentifier, 0)),
            (.connect, [0x17, 0x02], .invalidPropertyValue(.requestProblemInformation, 2)),
            (.connect, [0x19, 0xFF], .invalidPropertyValue(.requestResponseInformation, 255)),
            (.connect, [0x21, 0x00, 0x00], .invalidPropertyValue(.receiveMaximum, 0)),
            (.connack, [0x21, 0x00, 0x00], .invalidPropertyValue(.receiveMaximum, 0)),
            (.connect, [0x27, 0x00, 0x00, 0x00, 0x00], .invalidPropertyValue(.maximumPacketSize, 0)),
            (.publish, [0x23, 0x00, 0x00], .invalidPropertyValue(.topicAlias, 0)),
            (.connack, [0x24, 0x02], .invalidPropertyValue(.maximumQoS, 2)),
            (.connack, [0x25, 0x02], .invalidPropertyValue(.retainAvailable, 2)),
            (.connack, [0x28, 0x02], .invalidPropertyValue(.wildcardSubscriptionAvailable, 2)),
            (.connack, [0x29, 0x02], .invalidPropertyValue(.subscriptionIdentifierAvailable, 2)),
            (.connack, [0x2A, 0x02], .invalidPropertyValue(.sharedSubscriptionAvailable, 2)),
            (.connect, [0x16, 0x00, 0x01, 0x00], .authenticationDataWithoutMethod),
            (.auth, [0x16, 0x00, 0x00], .authenticationDataWithoutMethod),
        ]
        for (place, properties, problem) in cases {
            let error = decodingProblem(place.bytes(properties), place.decodeVersion)
            #expect(error?.problem == problem)
            // MQTT 5.0 §3.3.2.3.4: a Topic Alias of 0 is answered with 0x94 Topic Alias invalid.
            let expected: MQTTReasonCode = problem == .invalidPropertyValue(.topicAlias, 0) ? .topicAliasInvalid : .protocolError
            #expect(error?.reasonCode == expected)
        }
    }

    @Test func malformedPropertyLists() {
        let cases: [(Place, [UInt8], MQTTDecodingError.Problem)] = [
            (.connack, [0x00], .unknownProperty(0x00)),
            (.connack, [0x2B, 0x00], .unknownProperty(0x2B)),
            (.connack, [0x80, 0x01], .unknownProperty(0x80)),
            // A value that runs past the declared property length.
            (.connack, [0x11, 0x00, 0x00], .truncated("property value")),
            (.connack, [0x1F, 0x00, 0x05, 0x61], .truncated("Reason String")),
            (.publish, [0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], .variableByteIntegerTooLong("property value")),
            (.connack, [0x1F] + [0x00, 0x02, 0xC3, 0x28], .invalidUTF8("Reason String")),
            (.connack, [0x26] + mqttString("a\u{0}b") + mqttString("v"), .nullCharacter("User Property name")),
        ]
        for (place, properties, problem) in cases {
            let error = decodingProblem(place.bytes(properties), place.decodeVersion)
            #expect(error?.problem == problem)
            #expect(error?.reasonCode == .malformedPacket)
        }
        // A property length longer than the packet.
        let error = decodingProblem(frame(0xE0, [0x00, 0x05, 0x1F, 0x00]), .mqtt5)
        #expect(error?.problem == .truncated("properties"))
        // A property length of five bytes.
        let long = decodingProblem(frame(0xE0, [0x00, 0x80, 0x80, 0x80, 0x80, 0x01]), .mqtt5)
        #expect(long?.problem == .variableByteIntegerTooLong("property length"))
    }

    @Test func encoderRefusesOutOfRangeValues() {
        let cases: [(Place, MQTTProperty)] = [
            (.connack, .maximumQoS(.exactlyOnce)),
            (.connect, .receiveMaximum(0)),
            (.publish, .topicAlias(0)),
            (.connect, .maximumPacketSize(0)),
            (.publish, .subscriptionIdentifier(0)),
            (.publish, .subscriptionIdentifier(268_435_456)),
        ]
        for (place, property) in cases {
            #expect(throws: MQTTEncodingError(.invalidPropertyValue(property.identifier))) {
                try encode(place.packet([property]), .mqtt5)
            }
        }
        #expect(throws: MQTTEncodingError(.authenticationDataWithoutMethod)) {
            try encode(Place.auth.packet([.authenticationData(buffer([1]))]), .mqtt5)
        }
    }
}
