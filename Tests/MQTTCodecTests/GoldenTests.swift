import MQTTCodec
import NIOCore
import Testing

// Packets written out byte by byte from the specifications, as real clients send them.

@Suite struct GoldenTests {
    private func expectGolden(_ wire: [UInt8], _ packet: MQTTPacket, _ version: MQTTProtocolVersion) throws {
        #expect(decode(wire, packet.type == .connect ? nil : version) == .packet(packet))
        #expect(try encode(packet, version) == wire)
    }

    /// `mosquitto_pub -V mqttv311 -i sensor-1 -u alice -P secret -k 60 ...`
    @Test func connectFromMosquittoPub311() throws {
        let wire: [UInt8] = [
            0x10, 0x23,  // CONNECT, remaining length 35
            0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,  // "MQTT"
            0x04,  // level 4
            0xC2,  // user name, password, clean session
            0x00, 0x3C,  // keep alive 60
            0x00, 0x08, 0x73, 0x65, 0x6E, 0x73, 0x6F, 0x72, 0x2D, 0x31,  // "sensor-1"
            0x00, 0x05, 0x61, 0x6C, 0x69, 0x63, 0x65,  // "alice"
            0x00, 0x06, 0x73, 0x65, 0x63, 0x72, 0x65, 0x74,  // "secret"
        ]
        let connect = MQTTConnect(
            protocolVersion: .mqtt3_1_1, clientIdentifier: "sensor-1", cleanStart: true, keepAlive: 60,
            userName: "alice", password: buffer("secret"))
        try expectGolden(wire, .connect(connect), .mqtt3_1_1)
    }

    /// A 3.1 CONNECT ("MQIsdp", level 3) with a will, as old clients send it.
    @Test func connect31WithWill() throws {
        let wire: [UInt8] = [
            0x10, 0x1A,
            0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70,  // "MQIsdp"
            0x03,  // level 3
            0x2C,  // will retain, will QoS 1, will flag; not clean
            0x00, 0x0A,
            0x00, 0x02, 0x69, 0x64,  // "id"
            0x00, 0x03, 0x6C, 0x2F, 0x77,  // will topic "l/w"
            0x00, 0x03, 0x62, 0x79, 0x65,  // will payload "bye"
        ]
        let connect = MQTTConnect(
            protocolVersion: .mqtt3_1, clientIdentifier: "id", cleanStart: false, keepAlive: 10,
            will: MQTTWill(topic: "l/w", payload: buffer("bye"), qos: .atLeastOnce, retain: true))
        try expectGolden(wire, .connect(connect), .mqtt3_1)
    }

    /// A v5 CONNECT with Session Expiry Interval and Receive Maximum, clean start.
    @Test func connect5() throws {
        let wire: [UInt8] = [
            0x10, 0x19,
            0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x05,
            0x02,  // clean start
            0x00, 0x1E,  // keep alive 30
            0x08,  // property length
            0x11, 0x00, 0x00, 0x0E, 0x10,  // Session Expiry Interval 3600
            0x21, 0x00, 0x0A,  // Receive Maximum 10
            0x00, 0x04, 0x64, 0x65, 0x76, 0x31,  // "dev1"
        ]
        let connect = MQTTConnect(
            protocolVersion: .mqtt5, clientIdentifier: "dev1", keepAlive: 30,
            properties: [.sessionExpiryInterval(3600), .receiveMaximum(10)])
        try expectGolden(wire, .connect(connect), .mqtt5)
    }

    /// A v5 CONNACK granting, with Receive Maximum, Maximum QoS and Assigned Client Identifier.
    @Test func connack5WithProperties() throws {
        let wire: [UInt8] = [
            0x20, 0x11,
            0x00,  // no session present
            0x00,  // Success
            0x0E,  // property length 14
            0x21, 0x00, 0x64,  // Receive Maximum 100
            0x24, 0x01,  // Maximum QoS 1
            0x12, 0x00, 0x06, 0x61, 0x75, 0x74, 0x6F, 0x2D, 0x31,  // Assigned Client Identifier "auto-1"
        ]
        let connack = MQTTConnAck(
            reasonCode: .success,
            properties: [.receiveMaximum(100), .maximumQoS(.atLeastOnce), .assignedClientIdentifier("auto-1")])
        try expectGolden(wire, .connack(connack), .mqtt5)
    }

    /// The README's session rules: one v5 decision, two wire forms.
    @Test func connackRefusals() throws {
        let v5: [(MQTTReasonCode, UInt8)] = [
            (.clientIdentifierNotValid, 2), (.quotaExceeded, 5), (.notAuthorized, 5), (.badUserNameOrPassword, 4),
            (.badAuthenticationMethod, 4), (.serverUnavailable, 3), (.unsupportedProtocolVersion, 1),
        ]
        for (code, returnCode) in v5 {
            #expect(try encode(.connack(MQTTConnAck(reasonCode: code)), .mqtt5) == [0x20, 0x03, 0x00, code.rawValue, 0x00])
            #expect(try encode(.connack(MQTTConnAck(reasonCode: code)), .mqtt3_1_1) == [0x20, 0x02, 0x00, returnCode])
        }
        // A refusal never claims a session, whatever the caller set.
        #expect(
            try encode(.connack(MQTTConnAck(sessionPresent: true, reasonCode: .notAuthorized)), .mqtt5)
                == [0x20, 0x03, 0x00, 0x87, 0x00])
        #expect(try encode(.connack(MQTTConnAck(sessionPresent: true)), .mqtt3_1_1) == [0x20, 0x02, 0x01, 0x00])
    }

    @Test func publish5WithTopicAlias() throws {
        let wire: [UInt8] = [
            0x3B,  // PUBLISH, DUP, QoS 1, RETAIN
            0x0D,
            0x00, 0x03, 0x61, 0x2F, 0x62,  // "a/b"
            0x12, 0x34,  // packet identifier
            0x03, 0x23, 0x00, 0x02,  // Topic Alias 2
            0x68, 0x69,  // "hi"
        ]
        let publish = MQTTPublish(
            topicName: "a/b", payload: buffer("hi"), qos: .atLeastOnce, retain: true, duplicate: true,
            packetIdentifier: 0x1234, properties: [.topicAlias(2)])
        try expectGolden(wire, .publish(publish), .mqtt5)
    }

    @Test func smallPackets() throws {
        let cases: [([UInt8], MQTTPacket, MQTTProtocolVersion)] = [
            ([0xC0, 0x00], .pingreq, .mqtt3_1_1),
            ([0xD0, 0x00], .pingresp, .mqtt5),
            ([0xE0, 0x00], .disconnect(MQTTDisconnect()), .mqtt3_1_1),
            ([0xE0, 0x00], .disconnect(MQTTDisconnect()), .mqtt5),
            ([0xE0, 0x01, 0x8E], .disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver)), .mqtt5),
            ([0x40, 0x02, 0x00, 0x07], .puback(MQTTPublishResponse(packetIdentifier: 7)), .mqtt5),
            ([0x40, 0x02, 0x00, 0x07], .puback(MQTTPublishResponse(packetIdentifier: 7)), .mqtt3_1_1),
            (
                [0x50, 0x03, 0x00, 0x07, 0x10],
                .pubrec(MQTTPublishResponse(packetIdentifier: 7, reasonCode: .noMatchingSubscribers)), .mqtt5
            ),
            ([0x62, 0x02, 0x00, 0x07], .pubrel(MQTTPublishResponse(packetIdentifier: 7)), .mqtt3_1_1),
            ([0x70, 0x02, 0x00, 0x07], .pubcomp(MQTTPublishResponse(packetIdentifier: 7)), .mqtt5),
            (
                [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x01],
                .subscribe(
                    MQTTSubscribe(
                        packetIdentifier: 1,
                        subscriptions: [MQTTSubscription(topicFilter: "a/b", options: MQTTSubscriptionOptions(qos: .atLeastOnce))])),
                .mqtt3_1_1
            ),
            (
                [0x90, 0x04, 0x00, 0x01, 0x01, 0x80],
                .suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.grantedQoS1, .unspecifiedError])), .mqtt3_1_1
            ),
            ([0xB0, 0x02, 0x00, 0x01], .unsuback(MQTTUnsubAck(packetIdentifier: 1)), .mqtt3_1_1),
            (
                [0xB0, 0x04, 0x00, 0x01, 0x00, 0x11],
                .unsuback(MQTTUnsubAck(packetIdentifier: 1, reasonCodes: [.noSubscriptionExisted])), .mqtt5
            ),
            ([0xF0, 0x00], .auth(MQTTAuth()), .mqtt5),
        ]
        for (wire, packet, version) in cases {
            try expectGolden(wire, packet, version)
        }
    }

    /// 5.0 lets a sender leave out the reason code and property length, or send them empty;
    /// both decode to the same value (the encoder writes the shortest form).
    @Test func optionalReasonCodeAndProperties() {
        #expect(decode([0x40, 0x04, 0x00, 0x07, 0x00, 0x00], .mqtt5) == .packet(.puback(MQTTPublishResponse(packetIdentifier: 7))))
        #expect(decode([0x40, 0x03, 0x00, 0x07, 0x00], .mqtt5) == .packet(.puback(MQTTPublishResponse(packetIdentifier: 7))))
        #expect(decode([0xE0, 0x02, 0x00, 0x00], .mqtt5) == .packet(.disconnect(MQTTDisconnect())))
        #expect(decode([0xF0, 0x01, 0x18], .mqtt5) == .packet(.auth(MQTTAuth(reasonCode: .continueAuthentication))))
        // Non-minimal remaining length: accepted.
        #expect(decode([0xC0, 0x80, 0x00], .mqtt5) == .packet(.pingreq))
    }
}
