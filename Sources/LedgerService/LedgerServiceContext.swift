import Authorization
import CustodyModel
import NIOCore
import NIOPosix
import Logging
import SessionLedger
import Synchronization

/// What every peer of the socket shares: the one door (the same `SessionAuthority` as the
/// MQTT listeners: same group commit, same events, same audit), who a claim is and what it
/// may do (replaced by a reload), and where takeovers of other fronts' connections go.
final class LedgerServiceContext: Sendable {
    let ledger: any SessionAuthority
    let logger: Logger
    let group: MultiThreadedEventLoopGroup
    let peers = LedgerPeers()
    let authority: LedgerAuthorityBox
    let access: LedgerAccessBox
    /// Boxed: a closure kept in a `Mutex` itself is wrapped in one more reabstraction thunk
    /// by every `withLock { $0 }`, so each takeover would cost more than the last.
    private let elsewhere: Mutex<Elsewhere?>
    private final class Elsewhere: Sendable {
        let handler: @Sendable (ConnectionNumber) -> Void
        init(_ handler: @escaping @Sendable (ConnectionNumber) -> Void) { self.handler = handler }
    }

    init(
        ledger: any SessionAuthority, logger: Logger, group: MultiThreadedEventLoopGroup,
        authority: (any IdentityAuthority)?, access: any AccessControl
    ) {
        self.ledger = ledger
        self.logger = logger
        self.group = group
        self.authority = LedgerAuthorityBox(authority)
        self.access = LedgerAccessBox(access)
        elsewhere = Mutex(nil)
    }

    func setElsewhere(_ handler: @escaping @Sendable (ConnectionNumber) -> Void) {
        elsewhere.withLock { $0 = Elsewhere(handler) }
    }

    /// R4: `connection` lost its session. A peer here that holds it is told; otherwise it is
    /// another front's (Custody's own listeners), which closes it.
    func takeOver(_ connection: ConnectionNumber, session: SessionName) {
        guard !tellHolder(of: connection, session: session), let elsewhere = elsewhere.withLock({ $0 }) else { return }
        elsewhere.handler(connection)
    }

    /// Tells the peer holding `connection` that it lost its session; false when no peer here holds it.
    func tellHolder(of connection: ConnectionNumber, session: SessionName) -> Bool {
        guard let holder = peers.takeHolder(of: connection) else { return false }
        // On this loop (the same peer, or one beside it): told before the claim's answer.
        if holder.eventLoop.inEventLoop {
            holder.value.lostSession(connection, session: session)
        } else {
            holder.eventLoop.execute { holder.value.lostSession(connection, session: session) }
        }
        return true
    }
}

/// The identity authority in force; swapped whole by a reload.
final class LedgerAuthorityBox: Sendable {
    private let current: Mutex<(any IdentityAuthority)?>
    init(_ authority: (any IdentityAuthority)?) { current = Mutex(authority) }
    var authority: (any IdentityAuthority)? { current.withLock { $0 } }
    func replace(with authority: any IdentityAuthority) { current.withLock { $0 = authority } }
}

/// The access control in force; swapped whole by a reload.
final class LedgerAccessBox: Sendable {
    private let current: Mutex<any AccessControl>
    init(_ access: any AccessControl) { current = Mutex(access) }
    var access: any AccessControl { current.withLock { $0 } }
    func replace(with access: any AccessControl) { current.withLock { $0 = access } }
}
