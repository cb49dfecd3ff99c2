import Authorization
import CustodyModel
import MQTTCodec
import NIOCore
import SessionLedger
import Synchronization

/// Connections by number, so that a takeover (R4) reaches the connection the ledger names.
/// (Whether a session is attached is the broker's to say: `hasDetachedSession`.)
final class ConnectionRegistry: Sendable {
    private struct Tables {
        /// One pointer per connection (its event loop is in it).
        var connections: [ConnectionNumber: MQTTConnection] = [:]
    }

    private let tables = Mutex(Tables())

    func register(_ connection: ConnectionNumber, _ handle: MQTTConnection) {
        tables.withLock { $0.connections[connection] = handle }
    }

    func unregister(_ connection: ConnectionNumber) {
        tables.withLock { _ = $0.connections.removeValue(forKey: connection) }
    }

    /// Tells `connection` it lost its session; the future says when it is gone.
    /// nil when no such connection is here any more.
    func takeOver(_ connection: ConnectionNumber, reason: MQTTReasonCode = .sessionTakenOver) -> EventLoopFuture<Void>? {
        guard let handle = tables.withLock({ $0.connections[connection] }) else { return nil }
        return handle.eventLoop.submit {
            handle.takenOver(reason: reason)
            return handle.finishedFuture()
        }.flatMap { $0 }
    }

    /// Tells `connection` its session was ended for overflowing its queue; the future says
    /// when it is gone. nil when no such connection is here any more.
    func sessionOverflowed(_ connection: ConnectionNumber) -> EventLoopFuture<Void>? {
        guard let handle = tables.withLock({ $0.connections[connection] }) else { return nil }
        return handle.eventLoop.submit {
            handle.sessionOverflowed()
            return handle.finishedFuture()
        }.flatMap { $0 }
    }

    /// Asks every connection to decide its identity again with `authority`; each future
    /// says whether that connection was disconnected for it.
    func reauthorizeAll(_ authority: any IdentityAuthority) -> [EventLoopFuture<Bool>] {
        let handles = tables.withLock { Array($0.connections.values) }
        return handles.map { handle in
            handle.eventLoop.submit { handle.reauthorize(authority) }
        }
    }

    /// Asks every connection to decide its permissions again with `access`; each future says
    /// how many subscriptions that connection's session lost for it.
    func reaccessAll(_ access: any AccessControl) -> [EventLoopFuture<Int>] {
        let handles = tables.withLock { Array($0.connections.values) }
        return handles.map { handle in
            handle.eventLoop.submit { handle.revokeSubscriptions(access: access) }
        }
    }

    /// Asks every connection to close: `asked` says when each has acted on it (its release, if
    /// any, handed to the ledger or to the shutdown batch), `finished` when each is gone.
    func shutdownAllAsked() -> (asked: [EventLoopFuture<Void>], finished: [EventLoopFuture<Void>]) {
        let handles = tables.withLock { Array($0.connections.values) }
        let asked = handles.map { handle in handle.eventLoop.submit { handle.shutdown() } }
        let finished = handles.map { handle in handle.eventLoop.flatSubmit { handle.finishedFuture() } }
        return (asked, finished)
    }

    var count: Int { tables.withLock { $0.connections.count } }
}
