import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

// Who the client is: the identity authority's decision on the CONNECT, and again whenever
// the authority is replaced (a SIGHUP reload) while the connection lives.

extension MQTTConnection {
    /// The identity authority was replaced: decide again with what the CONNECT presented; a
    /// client no longer accepted (or now named otherwise) is disconnected. True when it was.
    func reauthorize(_ authority: any IdentityAuthority) -> Bool {
        guard let credentials = credentials?.value, let connection, let sessionName, !finishStarted,
            signIn?.asking != true
        else { return false }
        let decision = signIn?.decision.map { authority.reconsider(credentials, decided: $0) } ?? authority.decide(credentials)
        let name = authenticationName.map { AuthenticationName(unchecked: $0) }
        guard decision.verdict != .authenticated || decision.authenticationName != name else { return false }
        let why = decision.verdict == .authenticated
            ? "now named \(decision.authenticationName)" : "\(decision.verdict): \(decision.detail)"
        services.logger.info("identity revoked", metadata: [
            "session_name": "\(sessionName)", "authentication_name": "\(authenticationName ?? "-")",
            "connection": "\(connection)", "remote_address": "\(remoteAddress)", "reason": "\(why)",
        ])
        perform(machine.revoked(why: why))
        return true
    }

    /// A first CONNECT's identity: decided now (nil without an authority), or being asked
    /// elsewhere, off this event loop.
    enum IdentityStep {
        case decided(IdentityDecision?)
        case asking
    }

    /// The identity authority's decision on a first CONNECT, or the start of asking for it.
    func decideIdentity(_ connect: MQTTConnect) -> IdentityStep {
        guard let authority = services.authority.authority else { return .decided(nil) }
        var certificate: CertificateIdentity?
        if let tls = tls?.value, let channel = io?.channel {
            do {
                certificate = try tls.peerIdentity(channel)
            } catch {
                return .decided(IdentityDecision(
                    authenticationName: AuthenticationName(unchecked: connect.userName ?? connect.clientIdentifier),
                    verdict: .authenticationFailed, detail: "cannot read the client certificate: \(error)"))
            }
        }
        let v5 = connect.protocolVersion == .mqtt5
        let credentials = ConnectCredentials(
            username: connect.userName, password: connect.password.map { Array($0.readableBytesView) },
            sessionName: connect.clientIdentifier, certificate: certificate,
            authenticationMethod: v5 ? connect.properties.authenticationMethod : nil,
            authenticationData: v5 ? connect.properties.authenticationData.map { Array($0.readableBytesView) } : nil,
            certificateChainPEM: certificate?.chainPEM ?? [], remoteAddress: remoteAddress,
            listener: io?.localAddressText ?? "")
        self.credentials = Boxed(credentials)
        guard authority.asksElsewhere(credentials) else {
            let identity = authority.decide(credentials)
            if identity.verdict == .authenticated, identity.method == .jwt || identity.method == .webhook {
                signedInAtOnce(identity)
            }
            return .decided(identity)
        }
        askElsewhere(authority, credentials, connect: connect)
        return .asking
    }
}
