import Authorization
import CustodyModel
import LedgerWire
import SessionLedger

// From the wire to the ledger and back: a claim as the `SessionAuthority` takes it, and its
// outcome as the peer reads it (with the CONNACK reason code Custody's own front would send).

enum LedgerClaims {
    /// Who the claim is: the identity authority's decision when there is one (the Username and
    /// password of the CONNECT; no certificate reaches the socket), otherwise the Username
    /// (the ClientID without one) is believed, as in Custody's own front (DESIGN.md §1).
    static func identity(_ claim: WireClaim, authority: (any IdentityAuthority)?) -> IdentityDecision {
        guard let authority else {
            return IdentityDecision(
                authenticationName: AuthenticationName(unchecked: claim.username ?? claim.sessionName),
                verdict: .authenticated, detail: "")
        }
        return authority.decide(ConnectCredentials(
            username: claim.username, password: claim.password, sessionName: claim.sessionName, certificate: nil))
    }

    static func request(_ claim: WireClaim, identity: IdentityDecision, connection: ConnectionNumber) -> ClaimRequest {
        ClaimRequest(
            authenticationName: identity.authenticationName, sessionName: SessionName(unchecked: claim.sessionName),
            connection: connection, protocolVersion: ProtocolVersion(rawValue: claim.protocolVersion) ?? .unknown,
            cleanStart: claim.cleanStart, requestedExpiryInterval: claim.requestedExpiryInterval,
            remoteAddress: claim.remoteAddress, identity: identity.verdict)
    }

    static func answer(_ result: Result<ClaimOutcome, LedgerError>, identity: IdentityDecision) -> WireClaimAnswer {
        switch result {
        case .success(.granted(let grant)):
            return WireClaimAnswer(
                outcome: .granted, reasonCode: 0x00, sessionPresent: grant.sessionPresent, connection: grant.connection,
                sequence: grant.sequence, expiryInterval: grant.expiryInterval,
                replacedConnection: grant.replacedConnection ?? 0)
        case .success(.rejected(let reason, let sequence)):
            return WireClaimAnswer(
                outcome: .rejected, rejectionReason: reason.rawValue,
                reasonCode: reasonCode(reason, badUserNameOrPassword: identity.badUserNameOrPassword),
                sequence: sequence)
        case .failure:
            // R8: 0x88 Server unavailable, as Custody's own front answers.
            return WireClaimAnswer(outcome: .failed, reasonCode: 0x88)
        }
    }

    /// DESIGN.md §1's table of CONNACK reason codes (MQTT 5), as `ConnectionStateMachine`
    /// chooses them for Custody's own front; the socket has no authentication method.
    static func reasonCode(_ reason: RejectionReason, badUserNameOrPassword: Bool) -> UInt8 {
        switch reason {
        case .invalidSessionName: 0x85  // R1 Client Identifier not valid
        case .quotaExceeded: 0x97  // R3 Quota exceeded
        case .ownedByAnotherClient, .unknownClient, .clientDisabled, .clientAuthorizationError, .clientAuthenticationError:
            0x87  // Not authorized
        case .authenticationFailed, .invalidAuthenticationName: 0x86  // Bad User Name or Password
        }
    }

    /// What a granted connection may do, decided once at the claim (nil: everything).
    static func permissions(_ access: any AccessControl, identity: IdentityDecision, sessionName: String) -> ClientPermissions? {
        guard access.mode == .enforced else { return nil }
        return access.permissions(authenticationName: identity.authenticationName.value, sessionName: sessionName)
    }
}
