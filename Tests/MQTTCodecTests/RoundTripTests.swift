import MQTTCodec
import NIOCore
import Testing

// Encode then decode gives the value back, and encoding that again gives the same bytes,
// for every packet type in both versions.

private let user = MQTTProperty.userProperty(MQTTUserProperty(name: "region", value: "eu-west"))
private let user2 = MQTTProperty.userProperty(MQTTUserProperty(name: "région", value: "ünïcode ✓"))

/// Every packet type with every field it has in 5.0 set to something.
let version5Samples: [MQTTPacket] = [
    .connect(
        MQTTConnect(
            protocolVersion: .mqtt5, clientIdentifier: "device-42", cleanStart: false, keepAlive: 30,
            userName: "alice", password: buffer([0x00, 0xFF, 0x10]),
            will: MQTTWill(
                topic: "devices/42/status", payload: buffer("offline"), qos: .exactlyOnce, retain: true,
                properties: [
                    .willDelayInterval(10), .payloadFormatIndicator(.utf8), .messageExpiryInterval(600),
                    .contentType("text/plain"), .responseTopic("devices/42/reply"),
                    .correlationData(buffer([1, 2, 3])), user,
                ]),
            properties: [
                .sessionExpiryInterval(3600), .receiveMaximum(20), .maximumPacketSize(65536),
                .topicAliasMaximum(8), .requestResponseInformation(true), .requestProblemInformation(false),
                .authenticationMethod("SCRAM-SHA-256"), .authenticationData(buffer([9, 8, 7])), user, user2,
            ])),
    .connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "")),
    .connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "p", password: buffer("only a password"))),
    .connack(
        MQTTConnAck(
            sessionPresent: true, reasonCode: .success,
            properties: [
                .sessionExpiryInterval(120), .receiveMaximum(100), .maximumQoS(.atLeastOnce), .retainAvailable(false),
                .maximumPacketSize(1_048_576), .assignedClientIdentifier("auto-7f3a"), .topicAliasMaximum(16),
                .reasonString("welcome"), .wildcardSubscriptionAvailable(true),
                .subscriptionIdentifierAvailable(true), .sharedSubscriptionAvailable(false), .serverKeepAlive(45),
                .responseInformation("responses/"), .serverReference("other.example:1883"),
                .authenticationMethod("SCRAM-SHA-256"), .authenticationData(buffer([1])), user,
            ])),
    .connack(MQTTConnAck(reasonCode: .quotaExceeded, properties: [.reasonString("too many sessions")])),
    .publish(
        MQTTPublish(
            topicName: "a/b/c", payload: buffer("hello"), qos: .atLeastOnce, retain: true, duplicate: true,
            packetIdentifier: 7,
            properties: [
                .payloadFormatIndicator(.utf8), .messageExpiryInterval(30), .topicAlias(3), .responseTopic("r/t"),
                .correlationData(buffer([0xCA, 0xFE])), user, .subscriptionIdentifier(1),
                .subscriptionIdentifier(268_435_455), .contentType("application/json"),
            ])),
    .publish(MQTTPublish(topicName: "", payload: buffer(""), properties: [.topicAlias(3)])),
    .publish(MQTTPublish(topicName: "q0", payload: buffer([0, 1, 2]))),
    .puback(MQTTPublishResponse(packetIdentifier: 1)),
    .puback(MQTTPublishResponse(packetIdentifier: 2, reasonCode: .noMatchingSubscribers)),
    .puback(MQTTPublishResponse(packetIdentifier: 3, reasonCode: .quotaExceeded, properties: [.reasonString("full"), user])),
    .pubrec(MQTTPublishResponse(packetIdentifier: 65535, reasonCode: .payloadFormatInvalid, properties: [user])),
    .pubrel(MQTTPublishResponse(packetIdentifier: 9, reasonCode: .packetIdentifierNotFound)),
    .pubcomp(MQTTPublishResponse(packetIdentifier: 9, properties: [.reasonString("done")])),
    .subscribe(
        MQTTSubscribe(
            packetIdentifier: 10,
            subscriptions: [
                MQTTSubscription(topicFilter: "a/+/c"),
                MQTTSubscription(
                    topicFilter: "#",
                    options: MQTTSubscriptionOptions(
                        qos: .exactlyOnce, noLocal: true, retainAsPublished: true, retainHandling: .doNotSend)),
                MQTTSubscription(
                    topicFilter: "$share/group/x",
                    options: MQTTSubscriptionOptions(qos: .atLeastOnce, retainHandling: .sendOnNewSubscribe)),
            ],
            properties: [.subscriptionIdentifier(77), user])),
    .suback(
        MQTTSubAck(
            packetIdentifier: 10, reasonCodes: [.grantedQoS0, .grantedQoS2, .notAuthorized, .topicFilterInvalid],
            properties: [.reasonString("partly"), user])),
    .unsubscribe(MQTTUnsubscribe(packetIdentifier: 11, topicFilters: ["a/+/c", "#"], properties: [user])),
    .unsuback(
        MQTTUnsubAck(
            packetIdentifier: 11, reasonCodes: [.success, .noSubscriptionExisted], properties: [.reasonString("ok")])),
    .pingreq,
    .pingresp,
    .disconnect(MQTTDisconnect()),
    .disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver)),
    .disconnect(
        MQTTDisconnect(
            reasonCode: .serverMoved,
            properties: [.sessionExpiryInterval(0), .serverReference("b.example"), .reasonString("moved"), user])),
    .disconnect(MQTTDisconnect(reasonCode: .normalDisconnection, properties: [user])),
    .auth(MQTTAuth()),
    .auth(
        MQTTAuth(
            reasonCode: .continueAuthentication,
            properties: [.authenticationMethod("SCRAM-SHA-256"), .authenticationData(buffer([4, 5])), .reasonString("go")])),
]

/// Every packet type of 3.1.1 (no AUTH), with only what 3.1.1 can carry.
let version311Samples: [MQTTPacket] = [
    .connect(
        MQTTConnect(
            protocolVersion: .mqtt3_1_1, clientIdentifier: "sensor-1", cleanStart: false, keepAlive: 0,
            userName: "bob", password: buffer([1, 2, 3]),
            will: MQTTWill(topic: "sensors/1/lwt", payload: buffer("gone"), qos: .atLeastOnce, retain: true))),
    .connect(MQTTConnect(protocolVersion: .mqtt3_1_1, clientIdentifier: "", userName: "user only")),
    .connect(MQTTConnect(protocolVersion: .mqtt3_1, clientIdentifier: "old-client", keepAlive: 10)),
    .connack(MQTTConnAck(sessionPresent: true)),
    .connack(MQTTConnAck(reasonCode: .unsupportedProtocolVersion)),
    .connack(MQTTConnAck(reasonCode: .clientIdentifierNotValid)),
    .connack(MQTTConnAck(reasonCode: .serverUnavailable)),
    .connack(MQTTConnAck(reasonCode: .badUserNameOrPassword)),
    .connack(MQTTConnAck(reasonCode: .notAuthorized)),
    .publish(MQTTPublish(topicName: "a/b", payload: buffer("x"))),
    .publish(
        MQTTPublish(
            topicName: "a/b", payload: buffer(""), qos: .exactlyOnce, retain: true, duplicate: true,
            packetIdentifier: 500)),
    .puback(MQTTPublishResponse(packetIdentifier: 1)),
    .pubrec(MQTTPublishResponse(packetIdentifier: 2)),
    .pubrel(MQTTPublishResponse(packetIdentifier: 3)),
    .pubcomp(MQTTPublishResponse(packetIdentifier: 4)),
    .subscribe(
        MQTTSubscribe(
            packetIdentifier: 5,
            subscriptions: [
                MQTTSubscription(topicFilter: "a/#", options: MQTTSubscriptionOptions(qos: .exactlyOnce)),
                MQTTSubscription(topicFilter: "b"),
            ])),
    .suback(MQTTSubAck(packetIdentifier: 5, reasonCodes: [.grantedQoS2, .unspecifiedError, .grantedQoS1])),
    .unsubscribe(MQTTUnsubscribe(packetIdentifier: 6, topicFilters: ["a/#"])),
    .unsuback(MQTTUnsubAck(packetIdentifier: 6)),
    .pingreq,
    .pingresp,
    .disconnect(MQTTDisconnect()),
]

@Suite struct RoundTripTests {
    @Test(arguments: version5Samples)
    func everyPacketInVersion5(packet: MQTTPacket) throws {
        try roundTrip(packet, .mqtt5)
    }

    @Test(arguments: version311Samples)
    func everyPacketInVersion311(packet: MQTTPacket) throws {
        try roundTrip(packet, .mqtt3_1_1)
    }

    @Test func samplesCoverEveryPacketType() {
        #expect(Set(version5Samples.map(\.type)) == Set(MQTTPacketType.allCases))
        #expect(Set(version311Samples.map(\.type)) == Set(MQTTPacketType.allCases).subtracting([.auth]))
    }

    /// The broker fills packets in v5 terms; a 3.1.1 connection gets what 3.1.1 can say.
    @Test func version5FieldsAreLeftOutFor311() throws {
        let cases: [(MQTTPacket, MQTTPacket)] = [
            (
                .connack(MQTTConnAck(sessionPresent: false, reasonCode: .quotaExceeded, properties: [.reasonString("no")])),
                .connack(MQTTConnAck(reasonCode: .notAuthorized))
            ),
            (
                .puback(MQTTPublishResponse(packetIdentifier: 4, reasonCode: .noMatchingSubscribers, properties: [user])),
                .puback(MQTTPublishResponse(packetIdentifier: 4))
            ),
            (
                .suback(MQTTSubAck(packetIdentifier: 2, reasonCodes: [.grantedQoS1, .topicFilterInvalid, .quotaExceeded])),
                .suback(MQTTSubAck(packetIdentifier: 2, reasonCodes: [.grantedQoS1, .unspecifiedError, .unspecifiedError]))
            ),
            (
                .unsuback(MQTTUnsubAck(packetIdentifier: 2, reasonCodes: [.noSubscriptionExisted])),
                .unsuback(MQTTUnsubAck(packetIdentifier: 2))
            ),
            (
                .disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver, properties: [.reasonString("bye")])),
                .disconnect(MQTTDisconnect())
            ),
            (
                .subscribe(
                    MQTTSubscribe(
                        packetIdentifier: 3,
                        subscriptions: [
                            MQTTSubscription(
                                topicFilter: "t",
                                options: MQTTSubscriptionOptions(
                                    qos: .atLeastOnce, noLocal: true, retainAsPublished: true,
                                    retainHandling: .doNotSend))
                        ], properties: [.subscriptionIdentifier(5)])),
                .subscribe(
                    MQTTSubscribe(
                        packetIdentifier: 3,
                        subscriptions: [
                            MQTTSubscription(topicFilter: "t", options: MQTTSubscriptionOptions(qos: .atLeastOnce))
                        ]))
            ),
            (
                .publish(MQTTPublish(topicName: "t", payload: buffer("p"), properties: [.messageExpiryInterval(5)])),
                .publish(MQTTPublish(topicName: "t", payload: buffer("p")))
            ),
        ]
        for (sent, received) in cases {
            try roundTrip(sent, .mqtt3_1_1, expect: received)
        }
        let connect = MQTTConnect(
            protocolVersion: .mqtt3_1_1, clientIdentifier: "c",
            will: MQTTWill(topic: "w", payload: buffer("x"), properties: [.willDelayInterval(5)]),
            properties: [.sessionExpiryInterval(60)])
        var stripped = connect
        stripped.properties = []
        stripped.will?.properties = []
        try roundTrip(.connect(connect), .mqtt3_1_1, expect: .connect(stripped))
    }

    /// Remaining lengths of one to four bytes, around each boundary.
    @Test(arguments: [0, 1, 121, 122, 16_377, 16_378, 2_097_145, 2_097_146, 3_000_000])
    func remainingLengthSizes(payloadSize: Int) throws {
        let payload = ByteBuffer(repeating: 0x5A, count: payloadSize)
        let packet = MQTTPacket.publish(MQTTPublish(topicName: "big", payload: payload))
        let encoded = try roundTrip(packet, .mqtt5)
        let remaining = 2 + 3 + 1 + payloadSize
        #expect(encoded.count == 1 + variableByteInteger(remaining).count + remaining)
    }

    @Test func repeatedPropertiesKeepTheirOrder() throws {
        let users = (0..<20).map { MQTTUserProperty(name: "k\($0 % 3)", value: "v\($0)") }
        var properties = MQTTProperties()
        properties.userProperties = users
        properties.subscriptionIdentifiers = [5, 1, 300, 2]
        let packet = MQTTPacket.publish(
            MQTTPublish(topicName: "t", payload: buffer(""), qos: .atLeastOnce, packetIdentifier: 1, properties: properties))
        try roundTrip(packet, .mqtt5)
        guard case .packet(.publish(let decoded)) = decode(try encode(packet, .mqtt5), .mqtt5) else {
            Issue.record("did not decode")
            return
        }
        #expect(decoded.properties.userProperties == users)
        #expect(decoded.properties.subscriptionIdentifiers == [5, 1, 300, 2])
    }

    @Test func typedPropertyAccessors() {
        var properties: MQTTProperties = [.reasonString("a"), user, .sessionExpiryInterval(1)]
        #expect(properties.sessionExpiryInterval == 1)
        #expect(properties.receiveMaximum == nil)
        properties.sessionExpiryInterval = 2
        properties.receiveMaximum = 10
        properties.reasonString = nil
        #expect(properties.list == [user, .sessionExpiryInterval(2), .receiveMaximum(10)])
        properties.list.append(.sessionExpiryInterval(3))
        properties.sessionExpiryInterval = 4
        #expect(properties.list == [user, .sessionExpiryInterval(4), .receiveMaximum(10)])
        properties.removeAll(.userProperty)
        #expect(!properties.contains(.userProperty))
        #expect(properties.count == 2)
    }
}
