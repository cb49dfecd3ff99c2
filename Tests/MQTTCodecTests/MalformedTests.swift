import MQTTCodec
import NIOCore
import Testing

// What a peer must not send: each case is refused as a value carrying the reason code to
// close with, and nothing is consumed.

private let connectHeader5 = mqttString("MQTT") + [5]
private let connectHeader311 = mqttString("MQTT") + [4]

private func expectProblem(
    _ wire: [UInt8], _ version: MQTTProtocolVersion?, _ problem: MQTTDecodingError.Problem,
    _ reasonCode: MQTTReasonCode, maximumPacketSize: Int = .max, sourceLocation: SourceLocation = #_sourceLocation
) {
    let error = decodingProblem(wire, version, maximumPacketSize: maximumPacketSize)
    #expect(error?.problem == problem, sourceLocation: sourceLocation)
    #expect(error?.reasonCode == reasonCode, sourceLocation: sourceLocation)
}

@Suite struct FixedHeaderTests {
    @Test func truncatedRemainingLengthNeedsMoreData() {
        for wire: [UInt8] in [[], [0x30], [0x30, 0x80], [0x30, 0xFF, 0xFF], [0x30, 0xFF, 0xFF, 0xFF]] {
            #expect(decode(wire, .mqtt5) == .needMoreData)
        }
    }

    @Test func fiveByteRemainingLength() {
        expectProblem([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], .mqtt5, .variableByteIntegerTooLong("remaining length"), .malformedPacket)
        // Refused as soon as the fourth byte shows a continuation bit.
        expectProblem([0xC0, 0x80, 0x80, 0x80, 0x80], .mqtt3_1_1, .variableByteIntegerTooLong("remaining length"), .malformedPacket)
    }

    @Test func remainingLongerThanContentNeedsMoreData() {
        #expect(decode([0x30, 0x0A, 0x00, 0x01, 0x61], .mqtt5) == .needMoreData)
        #expect(decode([0x40, 0x02, 0x00], .mqtt3_1_1) == .needMoreData)
    }

    @Test(arguments: MQTTPacketType.allCases.filter { $0 != .publish })
    func badFlags(type: MQTTPacketType) {
        let required: UInt8 = [.pubrel, .subscribe, .unsubscribe].contains(type) ? 0b0010 : 0
        for version in [MQTTProtocolVersion.mqtt3_1_1, .mqtt5] where type != .auth || version == .mqtt5 {
            for flags in UInt8(0)...15 where flags != required {
                // The body does not matter: flags are judged from the first byte alone.
                expectProblem([type.rawValue << 4 | flags], type == .connect ? nil : version,
                              .invalidFixedHeaderFlags(flags), .malformedPacket)
            }
        }
    }

    @Test func publishQoS3AndDupOnQoS0() {
        expectProblem([0x36], .mqtt5, .invalidQoS, .malformedPacket)
        expectProblem([0x37, 0x00], .mqtt3_1_1, .invalidQoS, .malformedPacket)
        expectProblem([0x38], .mqtt5, .duplicateFlagWithQoS0, .malformedPacket)
        expectProblem([0x39, 0x00], .mqtt3_1_1, .duplicateFlagWithQoS0, .malformedPacket)
    }

    @Test func reservedPacketTypes() {
        expectProblem([0x00, 0x00], .mqtt3_1_1, .reservedPacketType(0), .malformedPacket)
        expectProblem([0x00, 0x00], .mqtt5, .reservedPacketType(0), .malformedPacket)
        expectProblem([0xF0, 0x00], .mqtt3_1_1, .reservedPacketType(15), .malformedPacket)
        expectProblem([0xF0, 0x00], .mqtt3_1, .reservedPacketType(15), .malformedPacket)
        // AUTH in 3.1.1 even with a v5-shaped body.
        expectProblem([0xF0, 0x01, 0x18], .mqtt3_1_1, .reservedPacketType(15), .malformedPacket)
    }

    @Test func packetTooLargeIsRefusedFromTheHeader() {
        // Only the fixed header has arrived: 1 + 2 + 200 bytes announced, 100 allowed.
        expectProblem([0x30, 0xC8, 0x01], .mqtt5, .packetTooLarge(size: 203, maximum: 100), .packetTooLarge,
                      maximumPacketSize: 100)
        // Exactly the maximum is fine.
        let ping: [UInt8] = [0xC0, 0x00]
        #expect(decode(ping, .mqtt5, maximumPacketSize: 2) == .packet(.pingreq))
        expectProblem(ping, .mqtt5, .packetTooLarge(size: 2, maximum: 1), .packetTooLarge, maximumPacketSize: 1)
    }

    @Test func firstPacketMustBeConnect() {
        expectProblem([0xC0, 0x00], nil, .expectedConnect(.pingreq), .protocolError)
        expectProblem([0x30], nil, .expectedConnect(.publish), .protocolError)
    }

    @Test func trailingBytes() {
        expectProblem([0xC0, 0x01, 0x00], .mqtt5, .trailingBytes(1), .malformedPacket)
        expectProblem([0xD0, 0x02, 0x00, 0x00], .mqtt3_1_1, .trailingBytes(2), .malformedPacket)
        expectProblem([0x40, 0x03, 0x00, 0x01, 0x00], .mqtt3_1_1, .trailingBytes(1), .malformedPacket)
        expectProblem([0xE0, 0x01, 0x00], .mqtt3_1_1, .trailingBytes(1), .malformedPacket)
        expectProblem([0xB0, 0x03, 0x00, 0x01, 0x00], .mqtt3_1_1, .trailingBytes(1), .malformedPacket)
        expectProblem(frame(0x20, [0x00, 0x00, 0x00]), .mqtt3_1_1, .trailingBytes(1), .malformedPacket)
        expectProblem(frame(0x20, [0x00, 0x00, 0x00, 0x00]), .mqtt5, .trailingBytes(1), .malformedPacket)
    }
}

@Suite struct ConnectMalformedTests {
    private func connect(_ flags: UInt8, _ rest: [UInt8], version: UInt8 = 5) -> [UInt8] {
        let properties: [UInt8] = version == 5 ? [0x00] : []
        return frame(0x10, mqttString("MQTT") + [version, flags, 0x00, 0x3C] + properties + rest)
    }

    @Test func protocolNameAndLevel() {
        let rest = mqttString("c")
        for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQIsdp", 4), ("MQTX", 4), ("", 4)] {
            let wire = frame(0x10, mqttString(name) + [UInt8(level), 0x02, 0, 60] + rest)
            let error = decodingProblem(wire, nil)
            #expect(error?.problem == .unsupportedProtocol(name: name, level: UInt8(level)))
            #expect(error?.reasonCode == .unsupportedProtocolVersion)
            #expect(error?.protocolVersion == nil)
            #expect(MQTTConnectReturnCode(error!.reasonCode) == .unacceptableProtocolVersion)
        }
    }

    @Test func reservedFlag() {
        expectProblem(connect(0x03, mqttString("c")), nil, .reservedConnectFlagSet, .malformedPacket)
        expectProblem(connect(0x01, mqttString("c"), version: 4), nil, .reservedConnectFlagSet, .malformedPacket)
    }

    @Test func willFlags() {
        // Will QoS 1 or will retain without the will flag.
        expectProblem(connect(0x0A, mqttString("c")), nil, .willOptionsWithoutWill, .malformedPacket)
        expectProblem(connect(0x22, mqttString("c")), nil, .willOptionsWithoutWill, .malformedPacket)
        expectProblem(connect(0x32, mqttString("c"), version: 4), nil, .willOptionsWithoutWill, .malformedPacket)
        // Will QoS 3.
        let will = mqttString("c") + [0x00] + mqttString("w") + mqttString("x")
        expectProblem(connect(0x1E, will), nil, .invalidQoS, .malformedPacket)
        // A will topic with a wildcard, or empty.
        expectProblem(connect(0x06, mqttString("c") + [0x00] + mqttString("w/#") + mqttString("x")), nil,
                      .wildcardInTopicName, .malformedPacket)
        expectProblem(connect(0x06, mqttString("c") + [0x00] + mqttString("") + mqttString("x")), nil,
                      .emptyTopicName, .protocolError)
        // Will marked UTF-8 with a payload that is not.
        expectProblem(connect(0x06, mqttString("c") + [0x02, 0x01, 0x01] + mqttString("w") + [0x00, 0x01, 0xFF]), nil,
                      .payloadNotUTF8, .payloadFormatInvalid)
    }

    @Test func passwordWithoutUserName() {
        let wire = connect(0x42, mqttString("c") + mqttString("pw"), version: 4)
        let error = decodingProblem(wire, nil)
        #expect(error?.problem == .passwordWithoutUserName)
        #expect(error?.protocolVersion == .mqtt3_1_1)
        // 5.0 allows it.
        let v5 = connect(0x42, mqttString("c") + mqttString("pw"))
        #expect(decode(v5, nil) == .packet(.connect(
            MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "c", password: buffer("pw")))))
    }

    /// A failure after the level was read says which version to answer in.
    @Test func errorsCarryTheRequestedVersion() {
        let duplicate = frame(0x10, connectHeader5 + [0x02, 0, 60, 0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2] + mqttString("c"))
        let error = decodingProblem(duplicate, nil)
        #expect(error?.problem == .duplicateProperty(.sessionExpiryInterval))
        #expect(error?.reasonCode == .protocolError)
        #expect(error?.protocolVersion == .mqtt5)
        #expect(error?.packetType == .connect)
        #expect(error?.description == "CONNECT: Protocol Error: property Session Expiry Interval appears more than once")
    }

    @Test func truncatedFields() {
        // Client identifier declares 10 bytes, 2 are there.
        expectProblem(frame(0x10, connectHeader311 + [0x02, 0, 60, 0x00, 0x0A, 0x61, 0x62]), nil,
                      .truncated("client identifier"), .malformedPacket)
        // User name flag set, no user name.
        expectProblem(frame(0x10, connectHeader311 + [0x82, 0, 60] + mqttString("c")), nil,
                      .truncated("user name"), .malformedPacket)
        // Ends inside the keep alive.
        expectProblem(frame(0x10, connectHeader311 + [0x02, 0]), nil, .truncated("keep alive"), .malformedPacket)
        // Ends inside the protocol name.
        expectProblem(frame(0x10, [0x00, 0x04, 0x4D]), nil, .truncated("protocol name"), .malformedPacket)
    }

    @Test func badUTF8() {
        let cases: [[UInt8]] = [
            [0xC0, 0x80],  // overlong U+0000
            [0xED, 0xA0, 0x80],  // a UTF-16 surrogate
            [0xFF],
            [0x61, 0xE2, 0x82],  // cut inside a sequence
            [0xF4, 0x90, 0x80, 0x80],  // beyond U+10FFFF
        ]
        for bad in cases {
            let clientIdentifier = [0x00, UInt8(bad.count)] + bad
            expectProblem(frame(0x10, connectHeader311 + [0x02, 0, 60] + clientIdentifier), nil,
                          .invalidUTF8("client identifier"), .malformedPacket)
        }
        expectProblem(frame(0x10, connectHeader311 + [0x02, 0, 60] + mqttString("a\u{0}")), nil,
                      .nullCharacter("client identifier"), .malformedPacket)
    }
}

@Suite struct PacketMalformedTests {
    @Test func publishTopic() {
        expectProblem(frame(0x30, mqttString("a/+") + [0x00]), .mqtt5, .wildcardInTopicName, .malformedPacket)
        expectProblem(frame(0x30, mqttString("#")), .mqtt3_1_1, .wildcardInTopicName, .malformedPacket)
        expectProblem(frame(0x30, mqttString("a\u{0}b") + [0x00]), .mqtt5, .nullCharacter("topic name"), .malformedPacket)
        expectProblem(frame(0x30, [0x00, 0x02, 0xC3, 0x28, 0x00]), .mqtt5, .invalidUTF8("topic name"), .malformedPacket)
        expectProblem(frame(0x30, mqttString("") + [0x00]), .mqtt5, .emptyTopicName, .protocolError)
        expectProblem(frame(0x30, mqttString("")), .mqtt3_1_1, .emptyTopicName, .protocolError)
        // Topic length beyond the packet (mosquitto's "truncated packet" cases).
        expectProblem([0x30, 0x00], .mqtt5, .truncated("topic name"), .malformedPacket)
        expectProblem([0x30, 0x02, 0x00, 0x00], .mqtt5, .truncated("property length"), .malformedPacket)
        expectProblem([0x32, 0x03, 0x00, 0x01, 0x61], .mqtt5, .truncated("packet identifier"), .malformedPacket)
        expectProblem([0x32, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01], .mqtt5, .truncated("property length"), .malformedPacket)
    }

    @Test func publishPayloadFormat() {
        let wire = frame(0x30, mqttString("t") + [0x02, 0x01, 0x01, 0xFF, 0xFE])
        expectProblem(wire, .mqtt5, .payloadNotUTF8, .payloadFormatInvalid)
        // Unspecified bytes are not checked; U+0000 is fine in a UTF-8 payload.
        #expect(isPacket(decode(frame(0x30, mqttString("t") + [0x02, 0x01, 0x00, 0xFF]), .mqtt5)))
        #expect(isPacket(decode(frame(0x30, mqttString("t") + [0x02, 0x01, 0x01, 0x00, 0x41]), .mqtt5)))
    }

    @Test func zeroPacketIdentifier() {
        expectProblem(frame(0x32, mqttString("t") + [0x00, 0x00, 0x00]), .mqtt5, .zeroPacketIdentifier, .protocolError)
        expectProblem(frame(0x82, [0x00, 0x00, 0x00] + mqttString("f") + [0x00]), .mqtt5, .zeroPacketIdentifier, .protocolError)
        expectProblem(frame(0xA2, [0x00, 0x00] + mqttString("f")), .mqtt3_1_1, .zeroPacketIdentifier, .protocolError)
        expectProblem([0x40, 0x02, 0x00, 0x00], .mqtt5, .zeroPacketIdentifier, .protocolError)
    }

    @Test func emptySubscribeAndUnsubscribe() {
        expectProblem(frame(0x82, [0x00, 0x01, 0x00]), .mqtt5, .emptyPayload, .protocolError)
        expectProblem(frame(0x82, [0x00, 0x01]), .mqtt3_1_1, .emptyPayload, .protocolError)
        expectProblem(frame(0xA2, [0x00, 0x01, 0x00]), .mqtt5, .emptyPayload, .protocolError)
        expectProblem(frame(0xA2, [0x00, 0x01]), .mqtt3_1_1, .emptyPayload, .protocolError)
        expectProblem(frame(0x90, [0x00, 0x01, 0x00]), .mqtt5, .emptyPayload, .protocolError)
        // A topic filter without its options byte.
        expectProblem(frame(0x82, [0x00, 0x01, 0x00] + mqttString("f")), .mqtt5, .truncated("subscription options"),
                      .malformedPacket)
    }

    @Test func subscriptionOptions() {
        func subscribe(_ filter: String, _ options: UInt8, v5: Bool = true) -> [UInt8] {
            frame(0x82, [0x00, 0x01] + (v5 ? [0x00] : []) + mqttString(filter) + [options])
        }
        expectProblem(subscribe("f", 0x40), .mqtt5, .reservedSubscriptionOptionBitsSet(0x40), .malformedPacket)
        expectProblem(subscribe("f", 0x04, v5: false), .mqtt3_1_1, .reservedSubscriptionOptionBitsSet(0x04),
                      .malformedPacket)
        expectProblem(subscribe("f", 0x03), .mqtt5, .invalidSubscriptionQoS, .protocolError)
        expectProblem(subscribe("f", 0x03, v5: false), .mqtt3_1_1, .invalidSubscriptionQoS, .protocolError)
        expectProblem(subscribe("f", 0x30), .mqtt5, .invalidRetainHandling, .protocolError)
        expectProblem(subscribe("$share/g/f", 0x04), .mqtt5, .noLocalOnSharedSubscription, .protocolError)
        #expect(isPacket(decode(subscribe("$share/g/f", 0x2A), .mqtt5)))
    }

    @Test func reasonCodesNotDefinedForThePacket() {
        expectProblem([0x40, 0x03, 0x00, 0x01, 0x04], .mqtt5, .invalidReasonCode(0x04), .protocolError)
        expectProblem([0x62, 0x03, 0x00, 0x01, 0x10], .mqtt5, .invalidReasonCode(0x10), .protocolError)
        expectProblem([0xE0, 0x01, 0x18], .mqtt5, .invalidReasonCode(0x18), .protocolError)
        expectProblem([0xF0, 0x01, 0x00 + 0x87], .mqtt5, .invalidReasonCode(0x87), .protocolError)
        expectProblem(frame(0x20, [0x00, 0x04, 0x00]), .mqtt5, .invalidReasonCode(0x04), .protocolError)
        expectProblem(frame(0x20, [0x00, 0x06]), .mqtt3_1_1, .invalidReasonCode(0x06), .protocolError)
        expectProblem(frame(0x90, [0x00, 0x01, 0x00, 0x03]), .mqtt5, .invalidReasonCode(0x03), .protocolError)
        expectProblem(frame(0x90, [0x00, 0x01, 0x87]), .mqtt3_1_1, .invalidReasonCode(0x87), .protocolError)
        expectProblem(frame(0xB0, [0x00, 0x01, 0x00, 0x10]), .mqtt5, .invalidReasonCode(0x10), .protocolError)
        expectProblem(frame(0x20, [0x02, 0x00, 0x00]), .mqtt5, .invalidConnectAcknowledgeFlags(0x02), .malformedPacket)
    }
}

@Suite struct EncoderErrorTests {
    @Test func refusalsLeaveTheBufferAlone() {
        let cases: [(MQTTPacket, MQTTProtocolVersion, MQTTEncodingError.Problem)] = [
            (.auth(MQTTAuth()), .mqtt3_1_1, .packetNotInVersion(.auth, .mqtt3_1_1)),
            (.publish(MQTTPublish(topicName: "t", payload: buffer(""), qos: .atLeastOnce)), .mqtt5, .invalidPacketIdentifier),
            (.publish(MQTTPublish(topicName: "t", payload: buffer(""), packetIdentifier: 1)), .mqtt5, .invalidPacketIdentifier),
            (
                .publish(MQTTPublish(topicName: "t", payload: buffer(""), qos: .exactlyOnce, packetIdentifier: 0)), .mqtt5,
                .invalidPacketIdentifier
            ),
            (.publish(MQTTPublish(topicName: "t", payload: buffer(""), duplicate: true)), .mqtt5, .invalidField("DUP on QoS 0")),
            (.publish(MQTTPublish(topicName: "a/#", payload: buffer(""))), .mqtt5, .invalidField("topic name")),
            (
                .publish(MQTTPublish(topicName: String(repeating: "x", count: 65_536), payload: buffer(""))), .mqtt5,
                .stringTooLong("topic name")
            ),
            (.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [])), .mqtt5, .emptyPayload),
            (.unsubscribe(MQTTUnsubscribe(packetIdentifier: 0, topicFilters: ["f"])), .mqtt5, .invalidPacketIdentifier),
            (.puback(MQTTPublishResponse(packetIdentifier: 1, reasonCode: .packetIdentifierNotFound)), .mqtt5,
             .invalidReasonCode(.packetIdentifierNotFound)),
            (.suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.noMatchingSubscribers])), .mqtt5,
             .invalidReasonCode(.noMatchingSubscribers)),
            (
                .connect(MQTTConnect(protocolVersion: .mqtt3_1_1, clientIdentifier: "c", password: buffer("p"))), .mqtt3_1_1,
                .passwordWithoutUserName
            ),
            (
                .connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "c", password: ByteBuffer(repeating: 0, count: 65_536))),
                .mqtt5, .binaryTooLong("password")
            ),
            (
                .publish(MQTTPublish(topicName: "t", payload: ByteBuffer(repeating: 0, count: 268_435_455))), .mqtt5,
                .packetTooLarge(268_435_455 + 4)
            ),
        ]
        for (packet, version, problem) in cases {
            var out = ByteBuffer(bytes: [1, 2, 3])
            let encoder = MQTTEncoder(protocolVersion: version)
            #expect(throws: MQTTEncodingError(problem)) { try encoder.encode(packet, into: &out) }
            #expect(throws: MQTTEncodingError(problem)) { try encoder.encodedSize(of: packet) }
            #expect(bytes(out) == [1, 2, 3])
        }
    }
}
