import CustodyModel
import Foundation
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

// Sign-in by a proof that runs out (a token, checked at once on this loop; the authentication
// webhook, asked elsewhere: the CONNECT waits for its answer without blocking the event loop,
// asked in a task and answered on this loop as the ledger's claims are, and the packets behind
// it wait too); then the proof's expiry ends the connection unless the client
// re-authenticates (MQTT 5 AUTH 0x19).

/// What a connection whose sign-in was decided elsewhere keeps. On its loop only.
final class SignInState {
    /// The decision is being asked for; reads are held and what came wait in `held`.
    var asking = true
    var held: [MQTTInbound] = []
    /// The decision that let the client in (its attributes, its expiry).
    var decision: IdentityDecision?
    /// A re-authentication is being decided.
    var reauthenticating = false
    /// Ends the connection when the proof runs out.
    var expiry: Scheduled<Void>?

    func end() {
        expiry?.cancel()
        expiry = nil
        held.removeAll()
    }
}

extension MQTTConnection {
    /// Seconds since 1970, by the wall clock: tokens' `exp` are wall-clock times.
    static func wallClockNow() -> Double { Date().timeIntervalSince1970 }

    /// Asks `authority` off this loop; `signedIn` goes on with the CONNECT on this loop.
    func askElsewhere(_ authority: any IdentityAuthority, _ credentials: ConnectCredentials, connect: MQTTConnect) {
        signIn = SignInState()
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let eventLoop = self.eventLoop
        Task {
            let decision = await authority.decideElsewhere(credentials)
            eventLoop.execute { bound.value.signedIn(decision, connect: connect) }
        }
    }

    /// A proof decided at once (a token): kept, like one asked elsewhere, for its expiry and
    /// for re-authentication.
    func signedInAtOnce(_ identity: IdentityDecision) {
        let state = SignInState()
        state.asking = false
        state.decision = identity
        signIn = state
    }

    /// The answer to `askElsewhere`: the CONNECT is decided as if it had just come.
    func signedIn(_ identity: IdentityDecision, connect: MQTTConnect) {
        guard let state = signIn, state.asking, !finishStarted, let number = connection else { return }
        state.asking = false
        if identity.verdict == .authenticated { state.decision = identity }
        let decision = connectDecided(connect, identity)
        perform(machine.received(
            .packet(.connect(connect)), connection: number, remoteAddress: remoteAddress, identity: decision, now: .now()))
        if decision?.verdict == .authenticated { scheduleExpiry(identity.expiration) }
        let held = state.held
        state.held = []
        for inbound in held { process(inbound) }
        resumeReadsIfHeld()
    }

    /// The connection ends at `expiration` (seconds since 1970) unless re-authenticated first.
    func scheduleExpiry(_ expiration: Double?) {
        guard let state = signIn else { return }
        state.expiry?.cancel()
        state.expiry = nil
        guard let expiration else { return }
        let seconds = max(0, expiration - Self.wallClockNow())
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        state.expiry = eventLoop.scheduleTask(in: .nanoseconds(Int64(min(seconds, 1e9) * 1e9))) {
            bound.value.signInExpired()
        }
    }

    func signInExpired() {
        guard let state = signIn, !finishStarted else { return }
        state.expiry = nil
        let what = state.decision?.method == .webhook ? "the webhook's expiration" : "the token's exp"
        services.logger.info("sign-in expired", metadata: [
            "session_name": "\(sessionName.map { "\($0)" } ?? "-")", "authentication_name": "\(authenticationName ?? "-")",
            "connection": "\(connection ?? 0)", "remote_address": "\(remoteAddress)", "reason": "\(what) passed",
        ])
        perform(machine.revoked(why: "\(what) passed without re-authentication"))
    }

    /// AUTH 0x19: the new Authentication Data is decided like the CONNECT's; the same name
    /// must come back. Success: AUTH 0x00, new expiry and attributes. Failure: DISCONNECT 0x87.
    func reauthenticate(method: String, data: [UInt8]) {
        guard let authority = services.authority.authority, var credentials = credentials?.value else {
            perform(machine.revoked(why: "re-authentication without an authority"))
            return
        }
        guard let state = signIn, !state.reauthenticating else {
            perform(machine.revoked(why: "re-authentication while one is under way"))
            return
        }
        state.reauthenticating = true
        credentials.authenticationMethod = method
        credentials.authenticationData = data
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let eventLoop = self.eventLoop
        Task {
            let decision = await authority.decideElsewhere(credentials)
            eventLoop.execute { bound.value.reauthenticated(decision, credentials: credentials) }
        }
    }

    func reauthenticated(_ decision: IdentityDecision, credentials: ConnectCredentials) {
        guard let state = signIn, !finishStarted, machine.isActive else { return }
        state.reauthenticating = false
        let name = authenticationName.map { AuthenticationName(unchecked: $0) }
        guard decision.verdict == .authenticated, decision.authenticationName == name else {
            let why = decision.verdict == .authenticated
                ? "re-authentication named \(decision.authenticationName), not \(authenticationName ?? "-")"
                : "re-authentication failed: \(decision.verdict): \(decision.detail)"
            perform(machine.revoked(why: why))
            return
        }
        self.credentials = Boxed(credentials)
        state.decision = decision
        scheduleExpiry(decision.expiration)
        services.logger.info("re-authenticated", metadata: [
            "session_name": "\(sessionName.map { "\($0)" } ?? "-")", "authentication_name": "\(authenticationName ?? "-")",
            "connection": "\(connection ?? 0)", "remote_address": "\(remoteAddress)",
        ])
        write(machine.reauthenticated())
        // New claims may put the client in other groups.
        revokeSubscriptions(access: services.access.access)
    }
}
