import CustodyModel
import CustodyConfig
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// The connection state machine with an identity authority's decisions: the name and verdict
// it claims with, the code a refusal is answered with, and a revocation after a reload.

private let now = NIODeadline.uptimeNanoseconds(5_000_000_000)

private func connect(_ clientID: String, user: String? = nil, version: MQTTProtocolVersion = .mqtt5) -> MQTTInbound {
    .packet(.connect(MQTTConnect(protocolVersion: version, clientIdentifier: clientID, cleanStart: true, userName: user)))
}

private func decision(
    _ name: String, _ verdict: IdentityVerdict, _ detail: String = "why", password: Bool = false
) -> IdentityDecision {
    IdentityDecision(
        authenticationName: AuthenticationName(unchecked: name), verdict: verdict, detail: detail,
        badUserNameOrPassword: password)
}

private func granted(_ connection: ConnectionNumber) -> Result<ClaimOutcome, LedgerError> {
    .success(.granted(SessionGrant(
        sequence: 1, connection: connection, sessionPresent: false, expiryInterval: 0, replacedConnection: nil)))
}

@Suite("connection state machine: identity")
struct IdentityMachineTests {
    @Test func theAuthoritysNameAndVerdictGoToTheLedger() {
        var machine = ConnectionStateMachine()
        // No Username: the authority named the client from its certificate.
        let action = machine.received(connect("sessionId1"), connection: 4, identity: decision("device-7", .authenticated), now: now)
        guard case .claim(let request) = action else { Issue.record("\(action)"); return }
        #expect(request.authenticationName.value == "device-7")
        #expect(request.identity == .authenticated)

        var refused = ConnectionStateMachine()
        guard case .claim(let refusal) = refused.received(
            connect("s2", user: "device-2"), connection: 5, identity: decision("device-2", .clientDisabled), now: now)
        else { Issue.record("no claim"); return }
        #expect(refusal.identity == .clientDisabled)
    }

    @Test(arguments: [
        (IdentityVerdict.clientDisabled, RejectionReason.clientDisabled, false, MQTTReasonCode.notAuthorized),
        (.unknownClient, .unknownClient, false, .notAuthorized),
        // A certificate that does not prove the Username: not authorized.
        (.authenticationFailed, .authenticationFailed, false, .notAuthorized),
        // A wrong password: bad user name or password.
        (.authenticationFailed, .authenticationFailed, true, .badUserNameOrPassword),
    ])
    func aRefusalIsAnsweredWithItsCodeAndLogsItsReason(
        verdict: IdentityVerdict, reason: RejectionReason, password: Bool, code: MQTTReasonCode
    ) {
        for version in [MQTTProtocolVersion.mqtt5, .mqtt3_1_1] {
            var machine = ConnectionStateMachine()
            _ = machine.received(
                connect("s", user: "u", version: version), connection: 1,
                identity: decision("u", verdict, "the detail", password: password), now: now)
            let action = machine.claimCompleted(.success(.rejected(reason, sequence: 2)))
            guard case .reject(.connack(let connack)?, let why) = action else { Issue.record("\(action)"); return }
            // The encoder turns 0x87 into 3.1.1's 5 and 0x86 into 4.
            #expect(connack.reasonCode == code)
            #expect(why == "\(reason): the detail")
        }
    }

    @Test func otherRejectionsKeepTheirCodes() {
        var machine = ConnectionStateMachine()
        _ = machine.received(connect("s", user: "u"), connection: 1, identity: decision("u", .authenticated), now: now)
        guard case .reject(.connack(let connack)?, _) = machine.claimCompleted(.success(.rejected(.quotaExceeded, sequence: 2)))
        else { Issue.record("no reject"); return }
        #expect(connack.reasonCode == .quotaExceeded)
    }

    @Test func aRevokedConnectionHearsNotAuthorizedAndIsRecordedAsAnAuthenticationError() {
        for version in [MQTTProtocolVersion.mqtt5, .mqtt3_1_1] {
            var machine = ConnectionStateMachine()
            _ = machine.received(connect("s", user: "u", version: version), connection: 9, identity: decision("u", .authenticated), now: now)
            _ = machine.claimCompleted(granted(9))
            _ = machine.accepted(now: now)
            guard case .close(let closing) = machine.revoked(why: "clientDisabled: the client is disabled") else {
                Issue.record("no close"); return
            }
            #expect(closing.release?.reason == .clientAuthenticationError)
            #expect(closing.release?.connection == 9)
            // 3.1.1 has no server DISCONNECT: the connection just closes.
            let expected: [MQTTPacket] = version == .mqtt5 ? [.disconnect(MQTTDisconnect(reasonCode: .notAuthorized))] : []
            #expect(closing.packets == expected)
            #expect(closing.why.contains("clientDisabled"))
            // Nothing more happens to a closing connection.
            guard case .none = machine.revoked(why: "again") else { Issue.record("acted twice"); return }
        }
    }

    @Test func revokedWhileTheClaimIsInFlightEndsRightAfterTheGrant() {
        var machine = ConnectionStateMachine()
        _ = machine.received(connect("s", user: "u"), connection: 3, identity: decision("u", .authenticated), now: now)
        guard case .none = machine.revoked(why: "removed") else { Issue.record("acted before the grant"); return }
        guard case .abandon(let grant, let closing) = machine.claimCompleted(granted(3)) else {
            Issue.record("not abandoned"); return
        }
        #expect(grant.connection == 3)
        #expect(closing.release?.reason == .clientAuthenticationError)
        #expect(closing.packets.last == .disconnect(MQTTDisconnect(reasonCode: .notAuthorized)))
    }
}
