/// The wire protocol a connection spoke; recorded so an audit can tell v3.1.1 from v5.
public enum ProtocolVersion: UInt8, Sendable, CaseIterable {
    case unknown = 0
    case mqtt3_1 = 3
    case mqtt3_1_1 = 4
    case mqtt5 = 5
}

/// Why a connection ended. Names and meanings follow Event Grid's
/// MQTTClientSessionDisconnected `disconnectionReason`, plus `brokerRestart`.
/// Raw values are part of the record format: never renumber, only append.
public enum DisconnectReason: UInt8, Sendable, CaseIterable {
    case clientInitiatedDisconnect = 1
    case connectionLost = 2
    case sessionTakenOver = 3
    case clientError = 4
    case clientAuthenticationError = 5
    case clientAuthorizationError = 6
    case serverInitiatedDisconnect = 7
    case serverError = 8
    case quotaExceeded = 9
    case sessionOverflow = 10
    case ipForbidden = 11
    /// The connection was found open when the broker started after a crash.
    case brokerRestart = 12
}

/// Why a session ended without its client. Raw values are part of the record format.
public enum ExpiryReason: UInt8, Sendable, CaseIterable {
    /// The session stayed disconnected past its expiry deadline.
    case sessionExpired = 1
    /// The deadline passed while the broker was down; found at start.
    case expiredWhileBrokerDown = 2
    /// The session's offline queue overflowed (Event Grid's SessionOverflow).
    case sessionOverflow = 3
    /// A cluster node found at start that etcd no longer gives it this session (taken over
    /// on another node, or ended there while this node was down).
    case notHeldInCluster = 4
}

/// Why a CONNECT was refused. Reason codes are chosen from these by the MQTT front only.
/// Raw values are part of the record format.
public enum RejectionReason: UInt8, Sendable, CaseIterable {
    /// R1: ClientID empty, too long or not valid UTF-8.
    case invalidSessionName = 1
    /// R3: the authentication name already holds its maximum of live sessions.
    case quotaExceeded = 2
    /// R6: another authentication name holds the session, connected or not yet expired.
    case ownedByAnotherClient = 3
    /// R7: the client is not in the registry.
    case unknownClient = 4
    /// R7: the client is registered but disabled.
    case clientDisabled = 5
    /// R7: credentials or certificate did not prove the identity.
    case authenticationFailed = 6
    /// R7: the authentication name itself is not acceptable (empty, too long).
    case invalidAuthenticationName = 7
    /// DESIGN.md §5: the client may not do what its CONNECT asks (its will topic is not one
    /// it may publish to).
    case clientAuthorizationError = 8
    /// R7: a JSON Web Token or the authentication webhook did not let the client in (Event
    /// Grid's ClientAuthenticationError: a bad or expired token, a denial, a webhook that failed).
    case clientAuthenticationError = 9
}

/// What happened, with the reason that belongs to that kind of fact.
public enum LedgerEventKind: Sendable, Equatable {
    case connected
    case disconnected(DisconnectReason)
    case expired(ExpiryReason)
    case rejected(RejectionReason)

    public var name: String {
        switch self {
        case .connected: "connected"
        case .disconnected: "disconnected"
        case .expired: "expired"
        case .rejected: "rejected"
        }
    }

    public var reasonName: String? {
        switch self {
        case .connected: nil
        case .disconnected(let reason): "\(reason)"
        case .expired(let reason): "\(reason)"
        case .rejected(let reason): "\(reason)"
        }
    }
}

/// One past-tense fact about a session. Immutable once appended.
public struct LedgerEvent: Sendable, Equatable {
    /// Dense, from 1. Zero only on a draft that the writer has not stamped yet.
    public var sequence: UInt64
    /// Microseconds since 1970-01-01T00:00:00Z.
    public var timestamp: Int64
    public var kind: LedgerEventKind
    public var authenticationName: AuthenticationName
    public var sessionName: SessionName
    public var connection: ConnectionNumber
    public var protocolVersion: ProtocolVersion
    public var cleanStart: Bool
    /// The session expiry interval in force after this event, in seconds.
    public var expiryInterval: UInt32
    /// Where the connection came from ("127.0.0.1:51234"); empty when not known.
    public var remoteAddress: String
    /// The session's epoch in a cluster: the etcd revision of the claim that decided it
    /// (DESIGN.md §7). 0 on a single node, where the record keeps format version 1.
    public var epoch: UInt64

    public init(
        sequence: UInt64 = 0,
        timestamp: Int64 = 0,
        kind: LedgerEventKind,
        authenticationName: AuthenticationName,
        sessionName: SessionName,
        connection: ConnectionNumber,
        protocolVersion: ProtocolVersion,
        cleanStart: Bool,
        expiryInterval: UInt32,
        remoteAddress: String = "",
        epoch: UInt64 = 0
    ) {
        self.sequence = sequence
        self.timestamp = timestamp
        self.kind = kind
        self.authenticationName = authenticationName
        self.sessionName = sessionName
        self.connection = connection
        self.protocolVersion = protocolVersion
        self.cleanStart = cleanStart
        self.expiryInterval = expiryInterval
        self.remoteAddress = remoteAddress
        self.epoch = epoch
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.sequence == rhs.sequence && lhs.timestamp == rhs.timestamp && lhs.kind == rhs.kind
            && lhs.authenticationName.value == rhs.authenticationName.value
            && lhs.sessionName == rhs.sessionName && lhs.connection == rhs.connection
            && lhs.protocolVersion == rhs.protocolVersion && lhs.cleanStart == rhs.cleanStart
            && lhs.expiryInterval == rhs.expiryInterval && lhs.remoteAddress == rhs.remoteAddress
            && lhs.epoch == rhs.epoch
    }
}
