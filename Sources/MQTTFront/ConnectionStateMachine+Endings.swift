import LedgerCore
import MQTTCodec
import NIOCore
import SessionLedger

// The ends that come from elsewhere than the client's packets: a takeover, shutdown, a
// revoked identity or authorization, a broker failure or overflow, a slow consumer, the
// channel gone. Each returns the action that closes, and what the ledger is to record.

extension ConnectionStateMachine {
    /// Another connection of the same identity took the session over (R4): the ledger has
    /// recorded it, so nothing is released here. `reason`: 0x8E; a cluster node whose lease
    /// lapsed ends its connections the same way with 0x9C Use another server (recorded by it).
    public mutating func takenOver(reason: MQTTReasonCode = .sessionTakenOver) -> Action {
        switch state {
        case .connecting(let identity, let pending, _):
            state = .connecting(identity, pending: pending, abandoned: .takenOver)
            return .none
        case .accepting(let identity, _, _), .active(let identity, _, _):
            state = .closing(identity.protocolVersion)
            return .close(Closing(
                packets: disconnect(identity, reason), release: nil,
                why: reason == .sessionTakenOver ? "sessionTakenOver" : "leaseLapsed", channelGone: false))
        case .awaitingConnect, .closing:
            return .none
        }
    }

    /// The broker is stopping.
    public mutating func shutdown() -> Action {
        switch state {
        case .awaitingConnect:
            state = .closing(nil)
            return .reject(connack: nil, why: "server shutting down")
        case .connecting(let identity, let pending, let abandoned):
            state = .connecting(identity, pending: pending, abandoned: abandoned ?? .shutdown)
            return .none
        case .accepting(let identity, _, _), .active(let identity, _, _):
            state = .closing(identity.protocolVersion)
            return .close(Closing(
                packets: disconnect(identity, .serverShuttingDown), release: release(identity, .serverInitiatedDisconnect),
                why: "serverInitiatedDisconnect", channelGone: false))
        case .closing:
            return .none
        }
    }

    /// The identity authority no longer accepts this connection's client (the registry was
    /// reloaded: disabled, removed, credentials no longer valid): v5 DISCONNECT 0x87 Not
    /// authorized, recorded as `disconnected(clientAuthenticationError)`.
    public mutating func revoked(why: String) -> Action {
        switch state {
        case .connecting(let identity, let pending, let abandoned):
            state = .connecting(identity, pending: pending, abandoned: abandoned ?? .revoked(why))
            return .none
        case .accepting(let identity, _, _), .active(let identity, _, _):
            state = .closing(identity.protocolVersion)
            return .close(Closing(
                packets: disconnect(identity, .notAuthorized), release: release(identity, .clientAuthenticationError),
                why: "clientAuthenticationError: \(why)", channelGone: false))
        case .awaitingConnect, .closing:
            return .none
        }
    }

    /// The client did what it may not (a 3.1.1 PUBLISH authorization denies, which 3.1.1
    /// cannot answer otherwise): closed, recorded as `disconnected(clientAuthorizationError)`;
    /// a v5 client would hear DISCONNECT 0x87.
    public mutating func notAuthorized(why: String) -> Action {
        guard case .active(let identity, _, _) = state else { return .none }
        state = .closing(identity.protocolVersion)
        return .close(Closing(
            packets: disconnect(identity, .notAuthorized), release: release(identity, .clientAuthorizationError),
            why: "clientAuthorizationError: \(why)", channelGone: false))
    }

    /// The session's queue overflowed and the ledger ended the session (`expired(sessionOverflow)`,
    /// after `disconnected(sessionOverflow)` for this connection): v5 DISCONNECT 0x97 Quota
    /// exceeded, nothing more to record.
    public mutating func sessionOverflowed() -> Action {
        switch state {
        case .connecting(let identity, let pending, let abandoned):
            state = .connecting(identity, pending: pending, abandoned: abandoned ?? .sessionOverflowed)
            return .none
        case .accepting(let identity, _, _), .active(let identity, _, _):
            state = .closing(identity.protocolVersion)
            return .close(Closing(
                packets: disconnect(identity, .quotaExceeded), release: nil, why: "sessionOverflow", channelGone: false))
        case .awaitingConnect, .closing:
            return .none
        }
    }

    /// The broker session failed to handle a packet: close with `code`.
    public mutating func brokerFailed(code: MQTTReasonCode, why: String) -> Action {
        guard case .active(let identity, _, _) = state else { return .none }
        state = .closing(identity.protocolVersion)
        return .close(Closing(
            packets: disconnect(identity, code), release: release(identity, .serverError), why: why, channelGone: false))
    }

    /// The client has not kept up with what is sent to it for too long (the outbound
    /// high-water mark): v5 DISCONNECT 0x97 Quota exceeded, `disconnected(quotaExceeded)`.
    public mutating func slowConsumer(why: String) -> Action {
        guard case .active(let identity, _, _) = state else { return .none }
        state = .closing(identity.protocolVersion)
        return .close(Closing(
            packets: disconnect(identity, .quotaExceeded), release: release(identity, .quotaExceeded), why: why,
            channelGone: false))
    }

    /// The channel is gone (peer closed, reset, or we closed it).
    public mutating func channelInactive() -> Action {
        switch state {
        case .awaitingConnect:
            state = .closing(nil)
            return .none
        case .connecting(let identity, let pending, let abandoned):
            state = .connecting(identity, pending: pending, abandoned: abandoned ?? .lost(.connectionLost))
            return .none
        case .accepting(let identity, _, _), .active(let identity, _, _):
            state = .closing(identity.protocolVersion)
            return .close(Closing(
                packets: [], release: release(identity, .connectionLost), why: "connectionLost", channelGone: true))
        case .closing:
            return .none
        }
    }
}
