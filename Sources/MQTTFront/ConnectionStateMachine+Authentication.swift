import CustodyModel
import MQTTCodec
import NIOCore

// Sign-in in the machine: the code a refused identity is told, and MQTT 5 re-authentication
// (AUTH 0x19 with the CONNECT's method, section 4.12.1), decided elsewhere and answered here.

extension ConnectionStateMachine {
    /// The v5 code for an identity the authority refused (3.1.1: the encoder maps it to 5, 4 or 3).
    static func refusalCode(_ decision: IdentityDecision) -> MQTTReasonCode {
        if decision.verdict == .connectRateExceeded { return .connectionRateExceeded }
        switch decision.refusal {
        case .badUserNameOrPassword: return .badUserNameOrPassword
        case .badAuthenticationMethod: return .badAuthenticationMethod
        case .serverUnavailable: return .serverUnavailable
        case .notAuthorized: return .notAuthorized
        }
    }

    /// An AUTH on an active connection: re-authentication when the CONNECT took a method and
    /// this names it with 0x19; anything else is a protocol error.
    mutating func authReceived(_ auth: MQTTAuth, identity: Identity) -> Action {
        guard let method = identity.authenticationMethod else {
            return closeForClientError(identity, code: .protocolError, why: "AUTH without an authentication method")
        }
        guard auth.reasonCode == .reAuthenticate, auth.properties.authenticationMethod == method else {
            let named = auth.properties.authenticationMethod ?? ""
            return closeForClientError(
                identity, code: .protocolError,
                why: "AUTH \(auth.reasonCode) with method '\(named)' (re-authentication is 0x19 with '\(method)')")
        }
        return .reauthenticate(
            method: method, data: auth.properties.authenticationData.map { Array($0.readableBytesView) } ?? [])
    }

    /// Re-authentication succeeded: the AUTH 0x00 that tells the client (nothing if no longer active).
    public func reauthenticated() -> [MQTTPacket] {
        guard case .active(let identity, _, _) = state, let method = identity.authenticationMethod else { return [] }
        var properties = MQTTProperties()
        properties.append(.authenticationMethod(method))
        return [.auth(MQTTAuth(reasonCode: .success, properties: properties))]
    }
}
