/// The namespace settings the session rules depend on, with Event Grid's ranges.
public struct NamespacePolicy: Sendable, Equatable {
    public static let sessionsPerClientRange = 1...100
    public static let expiryHoursRange = 1...8

    public let maximumClientSessionsPerAuthenticationName: Int
    public let maximumSessionExpiryInHours: Int

    public var maximumSessionExpirySeconds: UInt32 { UInt32(maximumSessionExpiryInHours) * 3600 }

    public static let `default` = try! NamespacePolicy()

    public init(
        maximumClientSessionsPerAuthenticationName: Int = 10,
        maximumSessionExpiryInHours: Int = 1
    ) throws(PolicyError) {
        guard Self.sessionsPerClientRange.contains(maximumClientSessionsPerAuthenticationName) else {
            throw .outOfRange(
                setting: "maximumClientSessionsPerAuthenticationName",
                value: maximumClientSessionsPerAuthenticationName, range: Self.sessionsPerClientRange)
        }
        guard Self.expiryHoursRange.contains(maximumSessionExpiryInHours) else {
            throw .outOfRange(
                setting: "maximumSessionExpiryInHours", value: maximumSessionExpiryInHours,
                range: Self.expiryHoursRange)
        }
        self.maximumClientSessionsPerAuthenticationName = maximumClientSessionsPerAuthenticationName
        self.maximumSessionExpiryInHours = maximumSessionExpiryInHours
    }

    /// The interval in force for a requested one: never more than the namespace allows.
    public func effectiveExpiry(requested: UInt32) -> UInt32 {
        min(requested, maximumSessionExpirySeconds)
    }
}

public enum PolicyError: Error, Equatable, Sendable, CustomStringConvertible {
    case outOfRange(setting: String, value: Int, range: ClosedRange<Int>)

    public var description: String {
        switch self {
        case .outOfRange(let setting, let value, let range):
            "\(setting) must be between \(range.lowerBound) and \(range.upperBound), got \(value)"
        }
    }
}

/// What authentication concluded about the client before the session rules run (R7).
public enum IdentityVerdict: Sendable, Equatable {
    case authenticated
    case unknownClient
    case clientDisabled
    case authenticationFailed
    /// Authenticated, but authorization refuses the CONNECT (DESIGN.md §5: its will topic):
    /// recorded as `rejected(clientAuthorizationError)`.
    case authorizationDenied
    /// A token or the authentication webhook refused the client: recorded as
    /// `rejected(clientAuthenticationError)`.
    case clientAuthenticationError
    /// Authenticated, but the session name was CONNECTed too often (a limit, DESIGN.md §6):
    /// recorded as `rejected(quotaExceeded)`.
    case connectRateExceeded
}

/// A CONNECT, as the ledger sees it.
public struct ClaimRequest: Sendable {
    public var authenticationName: AuthenticationName
    /// As received: R1 is checked by the rules so that the rejection is recorded.
    public var sessionName: SessionName
    public var connection: ConnectionNumber
    public var protocolVersion: ProtocolVersion
    public var cleanStart: Bool
    /// Seconds; v3.1.1 clean session 0 asks for `UInt32.max`, which the policy caps.
    public var requestedExpiryInterval: UInt32
    public var remoteAddress: String
    public var identity: IdentityVerdict

    public init(
        authenticationName: AuthenticationName, sessionName: SessionName, connection: ConnectionNumber,
        protocolVersion: ProtocolVersion = .mqtt5, cleanStart: Bool = false,
        requestedExpiryInterval: UInt32 = 0, remoteAddress: String = "",
        identity: IdentityVerdict = .authenticated
    ) {
        self.authenticationName = authenticationName
        self.sessionName = sessionName
        self.connection = connection
        self.protocolVersion = protocolVersion
        self.cleanStart = cleanStart
        self.requestedExpiryInterval = requestedExpiryInterval
        self.remoteAddress = remoteAddress
        self.identity = identity
    }
}

/// A granted claim, learned only once its `connected` event is durable.
public struct SessionGrant: Sendable, Equatable {
    /// The sequence number of the `connected` event.
    public var sequence: UInt64
    public var connection: ConnectionNumber
    public var sessionPresent: Bool
    /// The expiry interval in force (goes back to the client in a v5 CONNACK).
    public var expiryInterval: UInt32
    /// R4: the connection that held the session and must now be closed with 0x8E.
    public var replacedConnection: ConnectionNumber?

    public init(
        sequence: UInt64, connection: ConnectionNumber, sessionPresent: Bool, expiryInterval: UInt32,
        replacedConnection: ConnectionNumber?
    ) {
        self.sequence = sequence
        self.connection = connection
        self.sessionPresent = sessionPresent
        self.expiryInterval = expiryInterval
        self.replacedConnection = replacedConnection
    }
}

/// The answer to a claim. Rejections are values; failures to make anything durable throw.
public enum ClaimOutcome: Sendable, Equatable {
    case granted(SessionGrant)
    /// `sequence` is that of the recorded `rejected` event.
    case rejected(RejectionReason, sequence: UInt64)
}

/// What the rules decided, with the events that record it, in order. The last event is
/// the claim's own (`connected` or `rejected`); events before it end what stood in the way.
public struct ClaimPlan: Sendable {
    public enum Decision: Sendable, Equatable {
        case grant(sessionPresent: Bool, expiryInterval: UInt32, replacedConnection: ConnectionNumber?)
        case reject(RejectionReason)
    }

    public var events: [LedgerEvent]
    public var decision: Decision
}

/// The session rules R1–R7 of DESIGN.md §1 as a pure function of the projection.
/// R8 (nothing durable, nothing granted) is the writer's: it throws instead of answering.
public enum SessionRules {
    /// - Parameters:
    ///   - current: the projection's entry for the requested session name.
    ///   - requesterLiveSessions: live sessions (online and offline) of the requester.
    ///   - now: microseconds since the epoch, to tell an expired-but-unswept session.
    public static func plan(
        _ claim: ClaimRequest, current: SessionEntry?, requesterLiveSessions: Int,
        policy: NamespacePolicy, now: Int64
    ) -> ClaimPlan {
        func event(_ kind: LedgerEventKind, expiry: UInt32 = 0) -> LedgerEvent {
            LedgerEvent(
                kind: kind, authenticationName: claim.authenticationName, sessionName: claim.sessionName,
                connection: claim.connection, protocolVersion: claim.protocolVersion,
                cleanStart: claim.cleanStart, expiryInterval: expiry, remoteAddress: claim.remoteAddress)
        }
        var events: [LedgerEvent] = []
        func reject(_ reason: RejectionReason) -> ClaimPlan {
            events.append(event(.rejected(reason)))
            return ClaimPlan(events: events, decision: .reject(reason))
        }
        func grant(present: Bool, expiry: UInt32, replaced: ConnectionNumber?) -> ClaimPlan {
            events.append(event(.connected, expiry: expiry))
            return ClaimPlan(
                events: events, decision: .grant(sessionPresent: present, expiryInterval: expiry, replacedConnection: replaced))
        }

        // R1
        guard claim.sessionName.isValid else { return reject(.invalidSessionName) }
        // R7
        switch claim.identity {
        case .authenticated: break
        case .unknownClient: return reject(.unknownClient)
        case .clientDisabled: return reject(.clientDisabled)
        case .authenticationFailed: return reject(.authenticationFailed)
        case .authorizationDenied: return reject(.clientAuthorizationError)
        case .clientAuthenticationError: return reject(.clientAuthenticationError)
        case .connectRateExceeded: return reject(.quotaExceeded)
        }
        guard claim.authenticationName.isValid else {
            return reject(.invalidAuthenticationName)
        }

        var current = current
        var liveSessions = requesterLiveSessions
        // A disconnected session past its deadline is not live, even if the sweep has not
        // recorded its end yet: record it now, in the same transaction.
        if let stale = current, stale.hasExpired(at: now) {
            events.append(endingEvent(of: stale, named: claim.sessionName, kind: .expired(.sessionExpired)))
            if stale.owner == claim.authenticationName { liveSessions -= 1 }
            current = nil
        }

        let expiry = policy.effectiveExpiry(requested: claim.requestedExpiryInterval)
        guard let existing = current else {
            // R2 / R3
            guard liveSessions < policy.maximumClientSessionsPerAuthenticationName else {
                return reject(.quotaExceeded)
            }
            return grant(present: false, expiry: expiry, replaced: nil)
        }
        // R6
        guard existing.owner == claim.authenticationName else { return reject(.ownedByAnotherClient) }
        switch existing.state {
        case .connected:
            // R4: takeover. The old connection's session survives it only if it had an expiry.
            events.append(endingEvent(of: existing, named: claim.sessionName, kind: .disconnected(.sessionTakenOver)))
            let present = !claim.cleanStart && existing.expiryInterval > 0
            return grant(present: present, expiry: expiry, replaced: existing.connection)
        case .disconnected:
            // R5
            return grant(present: !claim.cleanStart, expiry: expiry, replaced: nil)
        }
    }

    /// The event that ends `entry`'s current state on the ledger's own initiative
    /// (takeover, expiry, restart), attributed to the session's owner and connection.
    public static func endingEvent(of entry: SessionEntry, named name: SessionName, kind: LedgerEventKind) -> LedgerEvent {
        LedgerEvent(
            kind: kind, authenticationName: entry.owner, sessionName: name, connection: entry.connection,
            protocolVersion: entry.protocolVersion, cleanStart: entry.cleanStart,
            expiryInterval: entry.expiryInterval)
    }

    /// The events that end a live session at once for `reason`, whatever its state (the
    /// broker's queue for it overflowed): a connected session's connection ends first
    /// (`disconnected` with the matching reason), then the session (`expired`) unless that
    /// connection's end already ended it (expiry interval 0).
    public static func forcedEnd(of entry: SessionEntry, named name: SessionName, reason: ExpiryReason) -> [LedgerEvent] {
        let ended = endingEvent(of: entry, named: name, kind: .expired(reason))
        guard entry.isConnected else { return [ended] }
        let disconnect: DisconnectReason = switch reason {
        case .sessionOverflow: .sessionOverflow
        case .sessionExpired, .expiredWhileBrokerDown, .notHeldInCluster: .serverInitiatedDisconnect
        }
        let closed = endingEvent(of: entry, named: name, kind: .disconnected(disconnect))
        return entry.expiryInterval > 0 ? [closed, ended] : [closed]
    }

    /// The `disconnected` event for a connection that ended, or nil when that connection no
    /// longer holds the session (it was taken over, or never held it).
    ///
    /// - Parameter newExpiryInterval: a v5 DISCONNECT's Session Expiry Interval. MQTT 5
    ///   forbids raising it from 0; the front answers that with 0x82, and here it is ignored.
    public static func release(
        _ connection: ConnectionNumber, of name: SessionName, reason: DisconnectReason,
        newExpiryInterval: UInt32?, current: SessionEntry?, policy: NamespacePolicy,
        remoteAddress: String = ""
    ) -> LedgerEvent? {
        guard let current, current.isConnected, current.connection == connection else { return nil }
        var expiry = current.expiryInterval
        if let requested = newExpiryInterval, current.expiryInterval > 0 || requested == 0 {
            expiry = policy.effectiveExpiry(requested: requested)
        }
        var event = endingEvent(of: current, named: name, kind: .disconnected(reason))
        event.expiryInterval = expiry
        event.remoteAddress = remoteAddress
        return event
    }
}
