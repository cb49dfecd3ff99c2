import CustodyModel
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// The front's limits in the connection state machine, without sockets: topic names (bytes,
// levels) of PUBLISHes and wills, property sizes, the connect-rate refusal, what each is
// answered with and which limit it is counted as.

private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

private func granted() -> Result<ClaimOutcome, LedgerError> {
    .success(.granted(SessionGrant(
        sequence: 1, connection: 7, sessionPresent: false, expiryInterval: 0, replacedConnection: nil)))
}

private func connect(
    _ version: MQTTProtocolVersion = .mqtt5, will: MQTTWill? = nil, properties: MQTTProperties = []
) -> MQTTInbound {
    .packet(.connect(MQTTConnect(
        protocolVersion: version, clientIdentifier: "s1", userName: "dev", will: will, properties: properties)))
}

private func active(
    _ version: MQTTProtocolVersion = .mqtt5, settings: ConnectionStateMachine.Settings = .init()
) -> ConnectionStateMachine {
    var machine = ConnectionStateMachine(settings: settings)
    _ = machine.received(connect(version), connection: 7, now: t0)
    _ = machine.claimCompleted(granted())
    _ = machine.accepted(now: t0)
    return machine
}

/// A topic of exactly `bytes` bytes in `levels` levels.
private func topic(bytes: Int, levels: Int = 1) -> String {
    let separators = levels - 1
    let fill = bytes - separators
    precondition(fill >= levels)
    var parts = Array(repeating: 1, count: levels)
    parts[0] += fill - levels
    return parts.map { String(repeating: "t", count: $0) }.joined(separator: "/")
}

private func publish(_ topic: String, qos: MQTTQoS = .atLeastOnce, properties: MQTTProperties = []) -> MQTTInbound {
    .packet(.publish(MQTTPublish(
        topicName: topic, payload: ByteBuffer(string: "x"), qos: qos, packetIdentifier: qos == .atMostOnce ? nil : 5,
        properties: properties)))
}

private func isDelivered(_ action: ConnectionStateMachine.Action) -> Bool {
    if case .toBroker(.publish) = action { return true }
    return false
}

@Suite("connection state machine: limits")
struct LimitMachineTests {
    @Test func theTopicHelperMakesWhatItSays() {
        #expect(topic(bytes: 256).utf8.count == 256)
        let deep = topic(bytes: 40, levels: 15)
        #expect(deep.utf8.count == 40)
        #expect(deep.split(separator: "/", omittingEmptySubsequences: false).count == 15)
    }

    @Test func aTopicAtTheLimitsIsDeliveredOneByteOrLevelMoreIs0x90OnQoS1And2() {
        var machine = active()
        #expect(isDelivered(machine.received(publish(topic(bytes: 256)), now: t0)))
        #expect(isDelivered(machine.received(publish(topic(bytes: 30, levels: 15)), now: t0)))
        let cases: [(String, MQTTQoS, FrontLimit, MQTTPacket)] = [
            (topic(bytes: 257), .atLeastOnce, .maxTopicBytes,
             .puback(MQTTPublishResponse(packetIdentifier: 5, reasonCode: .topicNameInvalid))),
            (topic(bytes: 40, levels: 16), .atLeastOnce, .maxTopicLevels,
             .puback(MQTTPublishResponse(packetIdentifier: 5, reasonCode: .topicNameInvalid))),
            (topic(bytes: 257), .exactlyOnce, .maxTopicBytes,
             .pubrec(MQTTPublishResponse(packetIdentifier: 5, reasonCode: .topicNameInvalid))),
        ]
        for (name, qos, expectedLimit, expectedAnswer) in cases {
            let action = machine.received(publish(name, qos: qos), now: t0)
            guard case .refuseMessage(let answer, let limit, _) = action else { Issue.record("\(action)"); continue }
            #expect(answer == expectedAnswer)
            #expect(limit == expectedLimit)
        }
        // The connection stays.
        #expect(machine.isActive)
        #expect(isDelivered(machine.received(publish("ok"), now: t0)))
    }

    @Test func onQoS0AndOn311ATopicTooLongClosesAsClientError() {
        var v5 = active()
        guard case .close(let closing) = v5.received(publish(topic(bytes: 257), qos: .atMostOnce), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .topicNameInvalid))])
        #expect(closing.release?.reason == .clientError)
        #expect(closing.limit == .maxTopicBytes)

        var v3 = active(.mqtt3_1_1)
        guard case .close(let closed) = v3.received(publish(topic(bytes: 40, levels: 16)), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closed.packets.isEmpty)
        #expect(closed.release?.reason == .clientError)
        #expect(closed.limit == .maxTopicLevels)
    }

    @Test func theTopicIsCheckedAfterItsAliasIsResolved() {
        var machine = active(settings: .init(topicAliasMaximum: 10, maximumTopicBytes: 8))
        let long = "a/b/c/d/e"  // 9 bytes
        let set = publish(long, properties: [.topicAlias(1)])
        guard case .refuseMessage(_, .maxTopicBytes, _) = machine.received(set, now: t0) else { Issue.record("not refused"); return }
        // The alias stands for the topic the client set (MQTT 5.0 section 3.3.2.3.4), and each
        // use of it is refused as the topic itself.
        guard case .refuseMessage(_, .maxTopicBytes, _) = machine.received(publish("", properties: [.topicAlias(1)]), now: t0)
        else { Issue.record("alias use not refused"); return }
        #expect(machine.isActive)
    }

    @Test func configuredTopicLimitsAreThoseInForce() {
        var machine = active(settings: .init(maximumTopicBytes: 10, maximumTopicLevels: 2))
        #expect(isDelivered(machine.received(publish("aaaa/bbbbb"), now: t0)))
        guard case .refuseMessage(_, .maxTopicBytes, _) = machine.received(publish("aaaa/bbbbbb"), now: t0) else {
            Issue.record("11 bytes taken"); return
        }
        guard case .refuseMessage(_, .maxTopicLevels, _) = machine.received(publish("a/b/c"), now: t0) else {
            Issue.record("3 levels taken"); return
        }
    }

    @Test func aWillTopicOverTheLimitsRefusesTheConnectBeforeTheLedger() {
        let will = MQTTWill(topic: topic(bytes: 257), payload: ByteBuffer(string: "gone"))
        var v5 = ConnectionStateMachine()
        let action = v5.received(connect(will: will), connection: 1, now: t0)
        guard case .refuse(let connack, .maxTopicBytes, _) = action else { Issue.record("\(action)"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .topicNameInvalid)))

        var v3 = ConnectionStateMachine()
        let deep = MQTTWill(topic: topic(bytes: 40, levels: 16), payload: ByteBuffer())
        guard case .refuse(nil, .maxTopicLevels, _) = v3.received(connect(.mqtt3_1_1, will: deep), connection: 1, now: t0)
        else { Issue.record("3.1.1 will not refused without CONNACK"); return }

        var atLimit = ConnectionStateMachine()
        let fine = MQTTWill(topic: topic(bytes: 256), payload: ByteBuffer())
        guard case .claim = atLimit.received(connect(will: fine), connection: 1, now: t0) else { Issue.record("refused"); return }
    }

    @Test func userPropertiesAtTheLimitPassOneByteMoreIs0x95() {
        var machine = active(settings: .init(maximumUserPropertyBytes: 100))
        let fits: MQTTProperties = [
            .userProperty(MQTTUserProperty(name: "a", value: String(repeating: "v", count: 49))),
            .userProperty(MQTTUserProperty(name: "b", value: String(repeating: "w", count: 49))),
        ]
        #expect(isDelivered(machine.received(publish("t", properties: fits), now: t0)))
        // On any packet: a PUBACK of the client's.
        var over = fits
        over.append(.userProperty(MQTTUserProperty(name: "c", value: "")))
        let action = machine.received(
            .packet(.puback(MQTTPublishResponse(packetIdentifier: 9, properties: over))), now: t0)
        guard case .close(let closing) = action else { Issue.record("\(action)"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
        #expect(closing.release?.reason == .clientError)
        #expect(closing.limit == .maxUserPropertyBytes)
    }

    @Test(arguments: [
        MQTTProperty.responseTopic(String(repeating: "r", count: 65)),
        .contentType(String(repeating: "c", count: 65)),
        .correlationData(ByteBuffer(repeating: 1, count: 65)),
    ])
    func aPropertyValueOverTheLimitIs0x95(property: MQTTProperty) {
        var machine = active(settings: .init(maximumPropertyValueBytes: 64))
        let fits: MQTTProperty
        switch property {
        case .responseTopic: fits = .responseTopic(String(repeating: "r", count: 64))
        case .contentType: fits = .contentType(String(repeating: "c", count: 64))
        default: fits = .correlationData(ByteBuffer(repeating: 1, count: 64))
        }
        #expect(isDelivered(machine.received(publish("t", properties: [fits]), now: t0)))
        guard case .close(let closing) = machine.received(publish("t", properties: [property]), now: t0) else {
            Issue.record("not closed"); return
        }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
        #expect(closing.limit == .maxPropertyValueBytes)
    }

    @Test func aConnectOrWillWithPropertiesOverTheLimitsIsRefusedWith0x95() {
        let settings = ConnectionStateMachine.Settings(maximumUserPropertyBytes: 10, maximumPropertyValueBytes: 8)
        var machine = ConnectionStateMachine(settings: settings)
        let big: MQTTProperties = [.userProperty(MQTTUserProperty(name: "name", value: "value-x"))]
        guard case .refuse(let connack, .maxUserPropertyBytes, _) = machine.received(connect(properties: big), connection: 1, now: t0)
        else { Issue.record("CONNECT properties taken"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .packetTooLarge)))

        var willMachine = ConnectionStateMachine(settings: settings)
        let will = MQTTWill(topic: "w", payload: ByteBuffer(), properties: [.responseTopic("reply/to/me")])
        guard case .refuse(_, .maxPropertyValueBytes, let why) = willMachine.received(connect(will: will), connection: 1, now: t0)
        else { Issue.record("will properties taken"); return }
        #expect(why.hasPrefix("will"))
    }

    @Test func theConnectRateVerdictIsAnswered0x9FAndCountedAsItsLimit() {
        for version in [MQTTProtocolVersion.mqtt5, .mqtt3_1_1] {
            var machine = ConnectionStateMachine()
            let decision = IdentityDecision(
                authenticationName: AuthenticationName(unchecked: "dev"), verdict: .connectRateExceeded, detail: "too soon")
            guard case .claim(let request) = machine.received(connect(version), connection: 3, identity: decision, now: t0) else {
                Issue.record("no claim"); return
            }
            // The ledger records it (rejected(quotaExceeded)); the CONNACK carries the front's code.
            #expect(request.identity == .connectRateExceeded)
            let action = machine.claimCompleted(.success(.rejected(.quotaExceeded, sequence: 4)))
            guard case .refuse(let connack, .connectsPerSecondPerSession, let why) = action else {
                Issue.record("\(action)"); return
            }
            // 3.1.1's CONNACK encodes 0x9F as return code 3 (server unavailable).
            #expect(connack == .connack(MQTTConnAck(reasonCode: .connectionRateExceeded)))
            #expect(MQTTConnectReturnCode(.connectionRateExceeded) == .serverUnavailable)
            #expect(why.contains("too soon"))
        }
    }

    @Test func exceedingTheReceiveMaximumOrTopicAliasMaximumIsCountedAsThatLimit() {
        var machine = active(settings: .init(topicAliasMaximum: 2, receiveMaximum: 1))
        #expect(isDelivered(machine.received(publish("a", properties: [.topicAlias(2)]), now: t0)))
        guard case .close(let closing) = machine.received(
            .packet(.publish(MQTTPublish(topicName: "b", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 6))),
            now: t0)
        else { Issue.record("second in flight taken"); return }
        #expect(closing.limit == .receiveMaximum)

        var aliases = active(settings: .init(topicAliasMaximum: 2))
        guard case .close(let tooHigh) = aliases.received(publish("a", properties: [.topicAlias(3)]), now: t0) else {
            Issue.record("alias 3 taken"); return
        }
        #expect(tooHigh.limit == .topicAliasMaximum)
    }

    @Test func outboundAliasesAreTheSmallerOfTheClientsAndTheServersMaximum() {
        for (client, server, expected) in [(UInt16(5), UInt16(10), UInt16(5)), (50, 10, 10), (0, 10, 0), (5, 0, 0)] {
            var machine = ConnectionStateMachine(settings: .init(topicAliasMaximum: server))
            let properties: MQTTProperties = client > 0 ? [.topicAliasMaximum(client)] : []
            _ = machine.received(connect(properties: properties), connection: 1, now: t0)
            guard case .accept(let acceptance) = machine.claimCompleted(granted()) else { Issue.record("no accept"); continue }
            #expect(acceptance.identity.outboundTopicAliasMaximum == expected)
        }
        var v3 = ConnectionStateMachine(settings: .init(topicAliasMaximum: 10))
        _ = v3.received(connect(.mqtt3_1_1), connection: 1, now: t0)
        guard case .accept(let acceptance) = v3.claimCompleted(granted()) else { Issue.record("no accept"); return }
        #expect(acceptance.identity.outboundTopicAliasMaximum == 0)
    }

    @Test func tooManyConnectionsAndNoConnectInTimeAreRefusedAsTheirLimits() {
        var machine = ConnectionStateMachine()
        guard case .refuse(nil, .maxConnections, _) = machine.tooManyConnections(maximum: 5) else {
            Issue.record("not refused"); return
        }
        // Closing: the connect timeout finds nothing to do.
        if case .refuse = machine.connectTimeoutFired() { Issue.record("refused twice") }
    }

    @Test func aPacketAboveTheMaximumSizeIsCountedAsMaxPacketBytes() {
        var decoder = MQTTDecoder(protocolVersion: .mqtt5, maximumPacketSize: 16)
        var bytes = ByteBuffer()
        _ = try? MQTTEncoder(protocolVersion: .mqtt5).encode(
            .publish(MQTTPublish(topicName: "t", payload: ByteBuffer(repeating: 1, count: 32))), into: &bytes)
        guard case .failure(let error) = decoder.decode(&bytes) else { Issue.record("decoded"); return }
        var machine = active()
        guard case .close(let closing) = machine.received(.failure(error), now: t0) else { Issue.record("no close"); return }
        #expect(closing.limit == .maxPacketBytes)
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
    }
}
