import CustodyModel
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// The connection state machine without sockets: every input, the action it returns.

private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

private func v5Connect(
    _ clientID: String, user: String? = nil, clean: Bool = true, expiry: UInt32? = nil, keepAlive: UInt16 = 60,
    extra: MQTTProperties = []
) -> MQTTInbound {
    var properties = extra
    if let expiry { properties.append(.sessionExpiryInterval(expiry)) }
    return .packet(.connect(MQTTConnect(
        protocolVersion: .mqtt5, clientIdentifier: clientID, cleanStart: clean, keepAlive: keepAlive, userName: user,
        properties: properties)))
}

private func v3Connect(_ clientID: String, user: String? = nil, clean: Bool = true, keepAlive: UInt16 = 60) -> MQTTInbound {
    .packet(.connect(MQTTConnect(
        protocolVersion: .mqtt3_1_1, clientIdentifier: clientID, cleanStart: clean, keepAlive: keepAlive, userName: user)))
}

private func grant(connection: ConnectionNumber = 7, present: Bool = false, expiry: UInt32 = 0, replaced: ConnectionNumber? = nil)
    -> Result<ClaimOutcome, LedgerError>
{
    .success(.granted(SessionGrant(
        sequence: 1, connection: connection, sessionPresent: present, expiryInterval: expiry, replacedConnection: replaced)))
}

/// A machine that has sent CONNECT and had it granted and accepted.
private func activeMachine(
    _ connect: MQTTInbound = v5Connect("s1", user: "dev"), expiry: UInt32 = 0,
    settings: ConnectionStateMachine.Settings = .init()
) -> ConnectionStateMachine {
    var machine = ConnectionStateMachine(settings: settings)
    _ = machine.received(connect, connection: 7, remoteAddress: "127.0.0.1:5000", now: t0)
    _ = machine.claimCompleted(grant(expiry: expiry))
    _ = machine.accepted(now: t0)
    return machine
}

/// A real decoding failure: the codec's own verdict on these bytes.
private func decodingFailure(_ bytes: [UInt8], version: MQTTProtocolVersion?) -> MQTTDecodingError {
    var buffer = ByteBuffer(bytes: bytes)
    var decoder = MQTTDecoder(protocolVersion: version)
    guard case .failure(let error) = decoder.decode(&buffer) else {
        Issue.record("bytes \(bytes) decoded without failure")
        return MQTTDecodingError(.emptyPayload, packetType: nil, protocolVersion: version)
    }
    return error
}

@Suite("connection state machine")
struct ConnectionStateMachineTests {
    @Test func v5ConnectClaimsWithUsernameAsIdentityAndAskedInterval() {
        var machine = ConnectionStateMachine()
        let action = machine.received(
            v5Connect("sessionId1", user: "ipv4=127.0.0.1", clean: false, expiry: 120), connection: 3,
            remoteAddress: "127.0.0.1:4000", now: t0)
        guard case .claim(let request) = action else { Issue.record("\(action)"); return }
        #expect(request.authenticationName.value == "ipv4=127.0.0.1")
        #expect(request.sessionName.value == "sessionId1")
        #expect(request.connection == 3)
        #expect(request.protocolVersion == .mqtt5)
        #expect(request.cleanStart == false)
        #expect(request.requestedExpiryInterval == 120)
        #expect(request.remoteAddress == "127.0.0.1:4000")
        #expect(request.identity == .authenticated)
        #expect(machine.protocolVersion == .mqtt5)
    }

    @Test func withoutUsernameTheSessionNameIsTheIdentity() {
        var machine = ConnectionStateMachine()
        guard case .claim(let request) = machine.received(v3Connect("lonely"), connection: 1, now: t0) else {
            Issue.record("no claim"); return
        }
        #expect(request.authenticationName.value == "lonely")
        #expect(request.protocolVersion == .mqtt3_1_1)
    }

    @Test(arguments: [(true, UInt32(0)), (false, UInt32.max)])
    func v3CleanSessionAsksForNothingOrForTheMaximum(clean: Bool, expected: UInt32) {
        var machine = ConnectionStateMachine()
        guard case .claim(let request) = machine.received(v3Connect("c", clean: clean), connection: 1, now: t0) else {
            Issue.record("no claim"); return
        }
        #expect(request.requestedExpiryInterval == expected)
        #expect(request.cleanStart == clean)
    }

    @Test func authenticationMethodIsRefusedAsBadAuthenticationMethod() {
        var machine = ConnectionStateMachine()
        let action = machine.received(
            v5Connect("s", user: "u", extra: [.authenticationMethod("SCRAM-SHA-1")]), connection: 1, now: t0)
        guard case .claim(let request) = action else { Issue.record("\(action)"); return }
        #expect(request.identity == .authenticationFailed)
        let answer = machine.claimCompleted(.success(.rejected(.authenticationFailed, sequence: 2)))
        guard case .reject(let connack?, _) = answer else { Issue.record("\(answer)"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .badAuthenticationMethod)))
    }

    @Test func grantAnswersWithConnAckCarryingTheIntervalInForceWhenCapped() {
        var machine = ConnectionStateMachine(settings: .init(capabilities: [.sharedSubscriptionAvailable(false)]))
        _ = machine.received(v5Connect("s", user: "u", clean: false, expiry: 100_000), connection: 7, now: t0)
        let action = machine.claimCompleted(grant(present: true, expiry: 3600))
        guard case .accept(let acceptance) = action else { Issue.record("\(action)"); return }
        #expect(acceptance.connack == .connack(MQTTConnAck(
            sessionPresent: true, reasonCode: .success,
            properties: [.sessionExpiryInterval(3600), .sharedSubscriptionAvailable(false)])))
        #expect(!machine.isActive)
        let (pending, keepAlive) = machine.accepted(now: t0)
        #expect(pending.isEmpty)
        #expect(keepAlive == t0 + .seconds(90))
        #expect(machine.isActive)
    }

    @Test func grantWithTheAskedIntervalLeavesThePropertyOut() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u", expiry: 60), connection: 7, now: t0)
        guard case .accept(let acceptance) = machine.claimCompleted(grant(expiry: 60)) else { Issue.record("no accept"); return }
        #expect(acceptance.connack == .connack(MQTTConnAck(sessionPresent: false, reasonCode: .success)))
    }

    @Test func v3GrantHasNoProperties() {
        var machine = ConnectionStateMachine(settings: .init(capabilities: [.retainAvailable(false)]))
        _ = machine.received(v3Connect("s", clean: false), connection: 7, now: t0)
        guard case .accept(let acceptance) = machine.claimCompleted(grant(present: true, expiry: 3600)) else {
            Issue.record("no accept"); return
        }
        #expect(acceptance.connack == .connack(MQTTConnAck(sessionPresent: true, reasonCode: .success)))
    }

    @Test(arguments: [
        (RejectionReason.invalidSessionName, MQTTReasonCode.clientIdentifierNotValid, MQTTConnectReturnCode.identifierRejected),
        (.quotaExceeded, .quotaExceeded, .notAuthorized),
        (.ownedByAnotherClient, .notAuthorized, .notAuthorized),
        (.unknownClient, .notAuthorized, .notAuthorized),
        (.clientDisabled, .notAuthorized, .notAuthorized),
        (.authenticationFailed, .badUserNameOrPassword, .badUserNameOrPassword),
        (.invalidAuthenticationName, .badUserNameOrPassword, .badUserNameOrPassword),
    ])
    func rejectionsGetDesignCodesInBothVersions(
        reason: RejectionReason, v5: MQTTReasonCode, v3: MQTTConnectReturnCode
    ) throws {
        for connect in [v5Connect("s", user: "u"), v3Connect("s", user: "u")] {
            var machine = ConnectionStateMachine()
            _ = machine.received(connect, connection: 1, now: t0)
            let action = machine.claimCompleted(.success(.rejected(reason, sequence: 9)))
            guard case .reject(let connack?, _) = action else { Issue.record("\(action)"); continue }
            #expect(connack == .connack(MQTTConnAck(reasonCode: v5)))
            // On the wire, in the connection's version.
            var buffer = ByteBuffer()
            try MQTTEncoder(protocolVersion: try #require(machine.protocolVersion)).encode(connack, into: &buffer)
            let code = buffer.getInteger(at: 3, as: UInt8.self)
            #expect(code == (machine.protocolVersion == .mqtt5 ? v5.rawValue : v3.rawValue))
            #expect(!machine.isActive)
        }
    }

    @Test func ledgerFailureIsServerUnavailable() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v3Connect("s"), connection: 1, now: t0)
        let action = machine.claimCompleted(.failure(.storage(operation: "mdb_txn_commit", code: 28, message: "No space left")))
        guard case .reject(let connack?, _) = action else { Issue.record("\(action)"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .serverUnavailable)))
    }

    @Test func packetsBeforeTheConnAckWaitAndComeBackInOrder() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u"), connection: 1, now: t0)
        let publish = MQTTInbound.packet(.publish(MQTTPublish(topicName: "a", payload: ByteBuffer(string: "x"))))
        #expect(isNone(machine.received(publish, now: t0)))
        #expect(isNone(machine.received(.packet(.pingreq), now: t0)))
        _ = machine.claimCompleted(grant())
        #expect(isNone(machine.received(.packet(.disconnect(MQTTDisconnect())), now: t0)))
        let (pending, _) = machine.accepted(now: t0)
        #expect(pending == [publish, .packet(.pingreq), .packet(.disconnect(MQTTDisconnect()))])
    }

    @Test func pingAndPubSubPacketsOnAnActiveConnection() {
        var machine = activeMachine()
        guard case .send(let answer) = machine.received(.packet(.pingreq), now: t0) else { Issue.record("no send"); return }
        #expect(answer == [.pingresp])
        let subscribe = MQTTPacket.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [MQTTSubscription(topicFilter: "a/#")]))
        guard case .toBroker(let delivered) = machine.received(.packet(subscribe), now: t0) else { Issue.record("no deliver"); return }
        #expect(delivered == subscribe)
    }

    @Test func secondConnectIsAProtocolError() {
        var machine = activeMachine()
        let action = machine.received(v5Connect("s1", user: "dev"), now: t0)
        guard case .close(let closing) = action else { Issue.record("\(action)"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
        #expect(closing.release?.reason == .clientError)
        #expect(closing.release?.connection == 7)
        #expect(!closing.channelGone)
        // Closing: nothing else happens, not even a second release.
        #expect(isNone(machine.received(.packet(.pingreq), now: t0)))
        #expect(isNone(machine.channelInactive()))
    }

    @Test func topicAliasIsInvalidWhenNoneWasOffered() {
        var machine = activeMachine()
        let publish = MQTTPublish(topicName: "a", payload: ByteBuffer(), properties: [.topicAlias(1)])
        guard case .close(let closing) = machine.received(.packet(.publish(publish)), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])
    }

    @Test func topicAliasIsSetThenUsedAndTheBrokerSeesTheFullTopic() {
        var machine = activeMachine(settings: .init(topicAliasMaximum: 10))
        let first = MQTTPublish(topicName: "plant/7/temp", payload: ByteBuffer(string: "1"), properties: [.topicAlias(3)])
        guard case .toBroker(.publish(let delivered)) = machine.received(.packet(.publish(first)), now: t0) else {
            Issue.record("no delivery"); return
        }
        #expect(delivered.topicName == "plant/7/temp")
        #expect(delivered.properties.topicAlias == nil)
        let second = MQTTPublish(topicName: "", payload: ByteBuffer(string: "2"), properties: [.topicAlias(3)])
        guard case .toBroker(.publish(let aliased)) = machine.received(.packet(.publish(second)), now: t0) else {
            Issue.record("no delivery"); return
        }
        #expect(aliased == MQTTPublish(topicName: "plant/7/temp", payload: ByteBuffer(string: "2")))
        // An alias may be set again to another topic.
        let third = MQTTPublish(topicName: "plant/8/temp", payload: ByteBuffer(string: "3"), properties: [.topicAlias(3)])
        _ = machine.received(.packet(.publish(third)), now: t0)
        let fourth = MQTTPublish(topicName: "", payload: ByteBuffer(string: "4"), properties: [.topicAlias(3)])
        guard case .toBroker(.publish(let again)) = machine.received(.packet(.publish(fourth)), now: t0) else {
            Issue.record("no delivery"); return
        }
        #expect(again.topicName == "plant/8/temp")
    }

    @Test func topicAliasAboveTheMaximumIsInvalid() {
        var machine = activeMachine(settings: .init(topicAliasMaximum: 10))
        let publish = MQTTPublish(topicName: "a", payload: ByteBuffer(), properties: [.topicAlias(11)])
        guard case .close(let closing) = machine.received(.packet(.publish(publish)), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])
        #expect(closing.release?.reason == .clientError)
        #expect(closing.why.contains("Topic Alias 11"))
    }

    @Test func topicAliasZeroIsRefusedByTheDecoderAsInvalidAlias() {
        // PUBLISH QoS 0, topic "a", properties: Topic Alias 0.
        let error = decodingFailure([0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00], version: .mqtt5)
        #expect(error.reasonCode == .topicAliasInvalid)
        var machine = activeMachine(settings: .init(topicAliasMaximum: 10))
        guard case .close(let closing) = machine.received(.failure(error), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])
    }

    @Test func unknownTopicAliasWithAnEmptyTopicIsAProtocolError() {
        var machine = activeMachine(settings: .init(topicAliasMaximum: 10))
        let publish = MQTTPublish(topicName: "", payload: ByteBuffer(), properties: [.topicAlias(2)])
        guard case .close(let closing) = machine.received(.packet(.publish(publish)), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
    }

    @Test func topicAliasesDoNotOutliveTheirConnection() {
        var machine = activeMachine(settings: .init(topicAliasMaximum: 10))
        _ = machine.received(.packet(.publish(MQTTPublish(topicName: "t", payload: ByteBuffer(), properties: [.topicAlias(1)]))), now: t0)
        // The same session on a new connection: a new machine, no aliases.
        var next = activeMachine(settings: .init(topicAliasMaximum: 10))
        let publish = MQTTPublish(topicName: "", payload: ByteBuffer(), properties: [.topicAlias(1)])
        guard case .close(let closing) = next.received(.packet(.publish(publish)), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
    }

    @Test func receiveMaximumCountsUnansweredPublishesAndOneMoreIs0x93() {
        var machine = activeMachine(settings: .init(receiveMaximum: 2))
        func publish(_ id: UInt16, _ qos: MQTTQoS, dup: Bool = false) -> MQTTInbound {
            .packet(.publish(MQTTPublish(topicName: "t", payload: ByteBuffer(), qos: qos, duplicate: dup, packetIdentifier: id)))
        }
        #expect(isDeliver(machine.received(publish(1, .atLeastOnce), now: t0)))
        #expect(isDeliver(machine.received(publish(2, .exactlyOnce), now: t0)))
        // A resend of one in flight is not one more; QoS 0 never counts.
        #expect(isDeliver(machine.received(publish(1, .atLeastOnce, dup: true), now: t0)))
        #expect(isDeliver(machine.received(.packet(.publish(MQTTPublish(topicName: "t", payload: ByteBuffer()))), now: t0)))
        // The PUBACK for 1 frees a place; a PUBREC for 2 does not (its PUBCOMP will).
        machine.answered([.puback(MQTTPublishResponse(packetIdentifier: 1)), .pubrec(MQTTPublishResponse(packetIdentifier: 2))])
        #expect(isDeliver(machine.received(publish(3, .atLeastOnce), now: t0)))
        guard case .close(let closing) = machine.received(publish(4, .atLeastOnce), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .receiveMaximumExceeded))])
        #expect(closing.release?.reason == .clientError)
    }

    @Test func pubcompAndAFailingPubrecFreeTheirPlace() {
        var machine = activeMachine(settings: .init(receiveMaximum: 1))
        func publish(_ id: UInt16) -> MQTTInbound {
            .packet(.publish(MQTTPublish(topicName: "t", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: id)))
        }
        #expect(isDeliver(machine.received(publish(1), now: t0)))
        machine.answered([.pubcomp(MQTTPublishResponse(packetIdentifier: 1))])
        #expect(isDeliver(machine.received(publish(2), now: t0)))
        machine.answered([.pubrec(MQTTPublishResponse(packetIdentifier: 2, reasonCode: .payloadFormatInvalid))])
        #expect(isDeliver(machine.received(publish(3), now: t0)))
    }

    @Test func v3ClientsHaveNoReceiveMaximum() {
        var machine = activeMachine(v3Connect("s", user: "u"), settings: .init(receiveMaximum: 1))
        for id in UInt16(1)...5 {
            let publish = MQTTPublish(topicName: "t", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: id)
            #expect(isDeliver(machine.received(.packet(.publish(publish)), now: t0)))
        }
    }

    @Test func connAckAnnouncesReceiveMaximumTopicAliasMaximumAndServerKeepAlive() {
        let settings = ConnectionStateMachine.Settings(
            capabilities: [.maximumPacketSize(1024)], topicAliasMaximum: 10, receiveMaximum: 100, maximumKeepAlive: 120)
        var machine = ConnectionStateMachine(settings: settings)
        _ = machine.received(v5Connect("s", user: "u", keepAlive: 600), connection: 7, now: t0)
        guard case .accept(let acceptance) = machine.claimCompleted(grant()) else { Issue.record("no accept"); return }
        #expect(acceptance.connack == .connack(MQTTConnAck(reasonCode: .success, properties: [
            .serverKeepAlive(120), .receiveMaximum(100), .topicAliasMaximum(10), .maximumPacketSize(1024),
        ])))
        // The keep-alive in force is the server's: 1.5 x 120 s.
        let (_, keepAlive) = machine.accepted(now: t0)
        #expect(keepAlive == t0 + .seconds(180))
    }

    @Test(arguments: [UInt16(0), 121, 65_535])
    func v5KeepAliveAboveTheMaximumOrZeroGetsServerKeepAlive(asked: UInt16) {
        var machine = ConnectionStateMachine(settings: .init(maximumKeepAlive: 120))
        _ = machine.received(v5Connect("s", user: "u", keepAlive: asked), connection: 7, now: t0)
        guard case .accept(let acceptance) = machine.claimCompleted(grant()) else { Issue.record("no accept"); return }
        #expect(acceptance.connack == .connack(MQTTConnAck(reasonCode: .success, properties: [.serverKeepAlive(120)])))
    }

    @Test(arguments: [UInt16(1), 60, 120])
    func keepAliveWithinTheMaximumIsTheClients(asked: UInt16) {
        var machine = ConnectionStateMachine(settings: .init(maximumKeepAlive: 120))
        _ = machine.received(v5Connect("s", user: "u", keepAlive: asked), connection: 7, now: t0)
        guard case .accept(let acceptance) = machine.claimCompleted(grant()) else { Issue.record("no accept"); return }
        #expect(acceptance.connack == .connack(MQTTConnAck(reasonCode: .success)))
        #expect(machine.accepted(now: t0).keepAlive == t0 + .milliseconds(Int64(asked) * 1500))
    }

    @Test(arguments: [UInt16(0), 121])
    func v3KeepAliveAboveTheMaximumIsRefusedBeforeTheLedger(asked: UInt16) {
        var machine = ConnectionStateMachine(settings: .init(maximumKeepAlive: 120))
        let action = machine.received(v3Connect("s", user: "u", keepAlive: asked), connection: 7, now: t0)
        guard case .reject(let connack?, let why) = action else { Issue.record("\(action)"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .clientIdentifierNotValid)))  // 3.1.1 return code 2
        #expect(why.contains("keep-alive"))
        #expect(machine.protocolVersion == .mqtt3_1_1)
        #expect(isNone(machine.claimCompleted(grant())))
    }

    @Test func clientDisconnectReleasesWithItsNewInterval() {
        var machine = activeMachine(v5Connect("s1", user: "dev", expiry: 60), expiry: 60)
        let disconnect = MQTTDisconnect(reasonCode: .normalDisconnection, properties: [.sessionExpiryInterval(0)])
        guard case .close(let closing) = machine.received(.packet(.disconnect(disconnect)), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closing.packets.isEmpty)
        #expect(closing.release?.reason == .clientInitiatedDisconnect)
        #expect(closing.release?.newExpiryInterval == 0)
        #expect(!closing.publishWill)  // MQTT-3.1.2-10: a normal DISCONNECT discards the will
    }

    @Test func disconnectWithWillMessageKeepsTheWill() {
        var machine = activeMachine()
        let disconnect = MQTTDisconnect(reasonCode: .disconnectWithWillMessage)
        guard case .close(let closing) = machine.received(.packet(.disconnect(disconnect)), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closing.publishWill)
        #expect(closing.release?.reason == .clientInitiatedDisconnect)
        // Every other end publishes it too.
        var lost = activeMachine()
        guard case .close(let gone) = lost.channelInactive() else { Issue.record("no close"); return }
        #expect(gone.publishWill)
    }

    @Test func theWillTravelsWithTheIdentity() {
        var machine = ConnectionStateMachine()
        let will = MQTTWill(topic: "wills/dev", payload: ByteBuffer(string: "gone"), qos: .atLeastOnce)
        _ = machine.received(
            .packet(.connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "s", userName: "u", will: will))),
            connection: 1, now: t0)
        guard case .accept(let acceptance) = machine.claimCompleted(grant(connection: 1)) else { Issue.record("no accept"); return }
        #expect(acceptance.identity.will == will)
    }

    @Test func disconnectRaisingTheIntervalFromZeroIsAProtocolError() {
        var machine = activeMachine(v5Connect("s1", user: "dev", expiry: 0))
        let disconnect = MQTTDisconnect(properties: [.sessionExpiryInterval(30)])
        guard case .close(let closing) = machine.received(.packet(.disconnect(disconnect)), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
        #expect(closing.release?.reason == .clientError)
        #expect(closing.release?.newExpiryInterval == nil)
    }

    @Test func v3DisconnectReleasesWithoutInterval() {
        var machine = activeMachine(v3Connect("s1", clean: false))
        guard case .close(let closing) = machine.received(.packet(.disconnect(MQTTDisconnect())), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closing.release?.reason == .clientInitiatedDisconnect)
        #expect(closing.release?.newExpiryInterval == nil)
    }

    @Test func malformedPacketOnV5ClosesWithTheDecodersCode() {
        var machine = activeMachine()
        // PUBLISH QoS 3.
        let error = decodingFailure([0x36, 0x03, 0x00, 0x01, 0x61], version: .mqtt5)
        guard case .close(let closing) = machine.received(.failure(error), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .malformedPacket))])
        #expect(closing.release?.reason == .clientError)
        #expect(closing.why.contains("QoS 3"))
    }

    @Test func malformedPacketOnV3JustCloses() {
        var machine = activeMachine(v3Connect("s1"))
        let error = decodingFailure([0x82, 0x02, 0x00, 0x01], version: .mqtt3_1_1)  // SUBSCRIBE without a filter
        guard case .close(let closing) = machine.received(.failure(error), now: t0) else { Issue.record("no close"); return }
        #expect(closing.packets.isEmpty)
        #expect(closing.release?.reason == .clientError)
    }

    @Test func malformedConnectAnswers() {
        // v5 CONNECT with an unknown property: CONNACK 0x81.
        let badProperty: [UInt8] = [0x10, 0x10, 0x00, 0x04] + Array("MQTT".utf8) + [0x05, 0x02, 0x00, 0x3C, 0x02, 0x7F, 0x00, 0x00, 0x01, 0x61]
        var machine = ConnectionStateMachine()
        var action = machine.received(.failure(decodingFailure(badProperty, version: nil)), now: t0)
        guard case .reject(let connack?, _) = action else { Issue.record("\(action)"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .malformedPacket)))
        #expect(machine.protocolVersion == .mqtt5)

        // Unknown protocol level: 3.1.1's return code 1.
        let level9: [UInt8] = [0x10, 0x0D, 0x00, 0x04] + Array("MQTT".utf8) + [0x09, 0x02, 0x00, 0x3C, 0x00, 0x01, 0x61]
        machine = ConnectionStateMachine()
        action = machine.received(.failure(decodingFailure(level9, version: nil)), now: t0)
        guard case .reject(let unsupported?, _) = action else { Issue.record("\(action)"); return }
        #expect(unsupported == .connack(MQTTConnAck(reasonCode: .unsupportedProtocolVersion)))
        #expect(machine.protocolVersion == .mqtt3_1_1)

        // ClientID not valid UTF-8: R1, 0x85 / 2.
        let badID: [UInt8] = [0x10, 0x0D, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, 0xFF]
        machine = ConnectionStateMachine()
        action = machine.received(.failure(decodingFailure(badID, version: nil)), now: t0)
        guard case .reject(let r1?, _) = action else { Issue.record("\(action)"); return }
        #expect(r1 == .connack(MQTTConnAck(reasonCode: .clientIdentifierNotValid)))
        #expect(machine.protocolVersion == .mqtt3_1_1)

        // 3.1.1 CONNECT with the reserved flag: the connection just closes.
        let reserved: [UInt8] = [0x10, 0x0D, 0x00, 0x04] + Array("MQTT".utf8) + [0x04, 0x03, 0x00, 0x3C, 0x00, 0x01, 0x61]
        machine = ConnectionStateMachine()
        action = machine.received(.failure(decodingFailure(reserved, version: nil)), now: t0)
        guard case .reject(nil, _) = action else { Issue.record("\(action)"); return }
    }

    @Test func keepAliveClosesAfterOneAndAHalfIntervalsOfSilence() {
        var machine = activeMachine(v5Connect("s1", user: "dev", keepAlive: 2))
        // Activity at t0 + 2 s moves the deadline to t0 + 5 s.
        _ = machine.received(.packet(.pingreq), now: t0 + .seconds(2))
        guard case .scheduleKeepAlive(let next) = machine.keepAliveTimerFired(now: t0 + .seconds(3)) else {
            Issue.record("no reschedule"); return
        }
        #expect(next == t0 + .seconds(5))
        guard case .close(let closing) = machine.keepAliveTimerFired(now: t0 + .seconds(5)) else {
            Issue.record("no close"); return
        }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .keepAliveTimeout))])
        #expect(closing.release?.reason == .connectionLost)
    }

    @Test func keepAliveZeroNeverExpires() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u", keepAlive: 0), connection: 1, now: t0)
        _ = machine.claimCompleted(grant())
        let (_, keepAlive) = machine.accepted(now: t0)
        #expect(keepAlive == nil)
        #expect(isNone(machine.keepAliveTimerFired(now: t0 + .hours(10))))
    }

    @Test func connectTimeoutOnlyBeforeConnect() {
        var machine = ConnectionStateMachine()
        // Counted as the limit it is (a client can open connections and say nothing at will).
        guard case .refuse(nil, .connectTimeoutSeconds, _) = machine.connectTimeoutFired() else {
            Issue.record("no refusal"); return
        }
        var connecting = ConnectionStateMachine()
        _ = connecting.received(v3Connect("s"), connection: 1, now: t0)
        #expect(isNone(connecting.connectTimeoutFired()))
    }

    @Test func lostConnectionReleasesAsConnectionLost() {
        var machine = activeMachine()
        guard case .close(let closing) = machine.channelInactive() else { Issue.record("no close"); return }
        #expect(closing.channelGone)
        #expect(closing.release?.reason == .connectionLost)
        #expect(closing.release?.sessionName.value == "s1")
    }

    @Test func connectionLostWhileClaimingIsReleasedWhenTheGrantArrives() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u"), connection: 4, now: t0)
        #expect(isNone(machine.channelInactive()))
        let action = machine.claimCompleted(grant(connection: 4, replaced: 2))
        guard case .abandon(let granted, let closing) = action else { Issue.record("\(action)"); return }
        #expect(granted.replacedConnection == 2)
        #expect(closing.channelGone)
        #expect(closing.release?.reason == .connectionLost)
        #expect(closing.release?.connection == 4)
    }

    @Test func connectionLostWhileClaimingNeedsNoReleaseWhenRefused() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u"), connection: 4, now: t0)
        _ = machine.channelInactive()
        guard case .reject = machine.claimCompleted(.success(.rejected(.ownedByAnotherClient, sequence: 3))) else {
            Issue.record("no reject"); return
        }
    }

    @Test func takeoverClosesWith0x8EAndRecordsNothing() {
        var machine = activeMachine()
        guard case .close(let closing) = machine.takenOver() else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver))])
        #expect(closing.release == nil)
        // The channel closing afterwards records nothing either.
        #expect(isNone(machine.channelInactive()))
    }

    @Test func takeoverBeforeTheGrantArrivedSendsConnAckThenDisconnect() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u", expiry: 10), connection: 4, now: t0)
        #expect(isNone(machine.takenOver()))
        guard case .abandon(_, let closing) = machine.claimCompleted(grant(connection: 4, expiry: 10)) else {
            Issue.record("no abandon"); return
        }
        #expect(closing.packets == [
            .connack(MQTTConnAck(sessionPresent: false, reasonCode: .success)),
            .disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver)),
        ])
        #expect(closing.release == nil)
    }

    /// The ledger ended the session for overflowing its queue and recorded the connection's
    /// end itself: 0x97, nothing more to record, before or after the grant came back.
    @Test func sessionOverflowClosesWith0x97AndRecordsNothing() {
        var machine = activeMachine()
        guard case .close(let closing) = machine.sessionOverflowed() else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .quotaExceeded))])
        #expect(closing.release == nil)
        #expect(isNone(machine.channelInactive()))

        var claiming = ConnectionStateMachine()
        _ = claiming.received(v5Connect("s", user: "u", expiry: 10), connection: 4, now: t0)
        #expect(isNone(claiming.sessionOverflowed()))
        guard case .abandon(_, let abandoned) = claiming.claimCompleted(grant(connection: 4, expiry: 10)) else {
            Issue.record("no abandon"); return
        }
        #expect(abandoned.packets.last == .disconnect(MQTTDisconnect(reasonCode: .quotaExceeded)))
        #expect(abandoned.release == nil)
    }

    @Test func shutdownDisconnectsWithServerShuttingDown() {
        var machine = activeMachine()
        guard case .close(let closing) = machine.shutdown() else { Issue.record("no close"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .serverShuttingDown))])
        #expect(closing.release?.reason == .serverInitiatedDisconnect)
    }

    @Test func shutdownWhileClaimingClosesOnceGranted() {
        var machine = ConnectionStateMachine()
        _ = machine.received(v5Connect("s", user: "u"), connection: 4, now: t0)
        #expect(isNone(machine.shutdown()))
        guard case .abandon(_, let closing) = machine.claimCompleted(grant(connection: 4)) else {
            Issue.record("no abandon"); return
        }
        #expect(!closing.channelGone)
        #expect(closing.packets.last == .disconnect(MQTTDisconnect(reasonCode: .serverShuttingDown)))
        #expect(closing.release?.reason == .serverInitiatedDisconnect)
    }

    @Test func retainedPublishIsRefusedWhenRetainIsNotAvailable() {
        var machine = ConnectionStateMachine(settings: .init(capabilities: [.retainAvailable(false)]))
        _ = machine.received(v5Connect("s", user: "u"), connection: 1, now: t0)
        _ = machine.claimCompleted(grant(connection: 1))
        _ = machine.accepted(now: t0)
        let publish = MQTTPublish(topicName: "a", payload: ByteBuffer(), retain: true)
        guard case .close(let closing) = machine.received(.packet(.publish(publish)), now: t0) else {
            Issue.record("no close"); return
        }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .retainNotSupported))])
    }

    @Test(arguments: ["127.0.0.1:1883", "0.0.0.0:0", "[::1]:8883", "localhost:65535"])
    func listenAddressesParse(text: String) throws {
        let address = try #require(HostPort(parsing: text))
        #expect(address.description == text)
    }

    @Test(arguments: ["1883", "127.0.0.1", "127.0.0.1:", ":1883", "127.0.0.1:65536", "127.0.0.1:-1", "::1:1883", "[::1:1883", "a b:1"])
    func badListenAddressesDoNot(text: String) {
        #expect(HostPort(parsing: text) == nil)
    }
}

private func isNone(_ action: ConnectionStateMachine.Action) -> Bool {
    if case .none = action { return true }
    return false
}

private func isDeliver(_ action: ConnectionStateMachine.Action) -> Bool {
    if case .toBroker = action { return true }
    return false
}
