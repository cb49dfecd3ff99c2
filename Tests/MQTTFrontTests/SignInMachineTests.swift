import CustodyModel
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// The connection state machine with sign-in decided elsewhere (a token, the webhook): the
// method named back in the CONNACK, the codes of its refusals, and AUTH re-authentication.

private let now = NIODeadline.uptimeNanoseconds(5_000_000_000)

private func connect(_ clientID: String, method: String?, version: MQTTProtocolVersion = .mqtt5) -> MQTTInbound {
    var properties = MQTTProperties()
    if let method {
        properties.authenticationMethod = method
        properties.authenticationData = ByteBuffer(string: "token")
    }
    return .packet(.connect(MQTTConnect(
        protocolVersion: version, clientIdentifier: clientID, cleanStart: true, properties: properties)))
}

private func granted(_ connection: ConnectionNumber) -> Result<ClaimOutcome, LedgerError> {
    .success(.granted(SessionGrant(
        sequence: 1, connection: connection, sessionPresent: false, expiryInterval: 0, replacedConnection: nil)))
}

private func decision(_ verdict: IdentityVerdict, _ method: SignInMethod, refusal: IdentityDecision.Refusal? = nil) -> IdentityDecision {
    IdentityDecision(
        authenticationName: AuthenticationName(unchecked: "device-1"), verdict: verdict, detail: "why", refusal: refusal,
        method: method)
}

private func auth(_ code: MQTTReasonCode, method: String?) -> MQTTInbound {
    var properties = MQTTProperties()
    if let method { properties.authenticationMethod = method }
    properties.authenticationData = ByteBuffer(string: "new-token")
    return .packet(.auth(MQTTAuth(reasonCode: code, properties: properties)))
}

/// A machine active after a CONNECT with `method` that a token let in.
private func active(method: String) -> ConnectionStateMachine {
    var machine = ConnectionStateMachine()
    _ = machine.received(connect("s", method: method), connection: 1, identity: decision(.authenticated, .jwt), now: now)
    _ = machine.claimCompleted(granted(1))
    _ = machine.accepted(now: now)
    return machine
}

@Suite("connection state machine: sign-in")
struct SignInMachineTests {
    @Test func aTakenMethodIsNamedInTheConnack() {
        var machine = ConnectionStateMachine()
        guard case .claim(let request) = machine.received(
            connect("s", method: "CUSTOM-JWT"), connection: 1, identity: decision(.authenticated, .jwt), now: now)
        else { Issue.record("no claim"); return }
        #expect(request.identity == .authenticated)
        guard case .accept(let acceptance) = machine.claimCompleted(granted(1)),
            case .connack(let connack) = acceptance.connack
        else { Issue.record("not accepted"); return }
        #expect(connack.properties.authenticationMethod == "CUSTOM-JWT")
    }

    @Test func aMethodNoWayInTookIsRefusedWith0x8C() {
        var machine = ConnectionStateMachine()
        // The registry decided (it knows no methods): the method is refused.
        guard case .claim(let request) = machine.received(
            connect("s", method: "SCRAM-SHA-1"), connection: 1, identity: decision(.authenticated, .registry), now: now)
        else { Issue.record("no claim"); return }
        #expect(request.identity == .authenticationFailed)
        guard case .reject(let connack?, _) = machine.claimCompleted(.success(.rejected(.authenticationFailed, sequence: 2)))
        else { Issue.record("not rejected"); return }
        #expect(connack == .connack(MQTTConnAck(reasonCode: .badAuthenticationMethod)))
    }

    @Test(arguments: [
        (IdentityDecision.Refusal.notAuthorized, MQTTReasonCode.notAuthorized, MQTTConnectReturnCode.notAuthorized),
        (.serverUnavailable, .serverUnavailable, .serverUnavailable),
    ])
    func refusalsOfTokensAndTheWebhook(refusal: IdentityDecision.Refusal, code: MQTTReasonCode, old: MQTTConnectReturnCode) {
        for version in [MQTTProtocolVersion.mqtt5, .mqtt3_1_1] {
            var machine = ConnectionStateMachine()
            _ = machine.received(
                connect("s", method: nil, version: version), connection: 1,
                identity: decision(.authenticationFailed, .webhook, refusal: refusal), now: now)
            guard case .reject(.connack(let connack)?, let why) = machine.claimCompleted(
                .success(.rejected(.authenticationFailed, sequence: 2)))
            else { Issue.record("not rejected"); return }
            #expect(connack.reasonCode == code)
            #expect(MQTTConnectReturnCode(connack.reasonCode) == old)
            #expect(why.contains("why"))
        }
    }

    @Test func reauthenticationIsAskedForAndAnswered() {
        var machine = active(method: "CUSTOM-JWT")
        guard case .reauthenticate(let method, let data) = machine.received(auth(.reAuthenticate, method: "CUSTOM-JWT"), now: now)
        else { Issue.record("no re-authentication"); return }
        #expect(method == "CUSTOM-JWT")
        #expect(data == Array("new-token".utf8))
        var properties = MQTTProperties()
        properties.authenticationMethod = "CUSTOM-JWT"
        #expect(machine.reauthenticated() == [.auth(MQTTAuth(reasonCode: .success, properties: properties))])
        // Failed: DISCONNECT 0x87, recorded as clientAuthenticationError.
        guard case .close(let closing) = machine.revoked(why: "re-authentication failed") else { Issue.record("not closed"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .notAuthorized))])
        #expect(closing.release?.reason == .clientAuthenticationError)
    }

    @Test func anAuthThatIsNotReauthenticationIsAProtocolError() {
        for packet in [auth(.continueAuthentication, method: "CUSTOM-JWT"), auth(.reAuthenticate, method: "OTHER")] {
            var machine = active(method: "CUSTOM-JWT")
            guard case .close(let closing) = machine.received(packet, now: now) else { Issue.record("not closed"); return }
            #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
        }
        // Without a method at CONNECT, AUTH is a protocol error as before.
        var plain = ConnectionStateMachine()
        _ = plain.received(connect("s", method: nil), connection: 1, now: now)
        _ = plain.claimCompleted(granted(1))
        _ = plain.accepted(now: now)
        guard case .close(let closing) = plain.received(auth(.reAuthenticate, method: "CUSTOM-JWT"), now: now)
        else { Issue.record("not closed"); return }
        #expect(closing.packets == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
    }
}
