/// The current state of one live session: who owns it and whether it is connected.
/// A session name without an entry is free.
public struct SessionEntry: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case connected
        /// Disconnected; the session ends at `deadline` (µs since the epoch) unless resumed.
        case disconnected(deadline: Int64)
    }

    public var owner: AuthenticationName
    public var state: State
    /// The connection that holds or last held the session.
    public var connection: ConnectionNumber
    public var protocolVersion: ProtocolVersion
    public var cleanStart: Bool
    public var expiryInterval: UInt32
    /// The event that put the session in its current state, and when.
    public var sinceSequence: UInt64
    public var sinceTime: Int64
    /// The `connected` event that started this session (a clean start starts a new one).
    public var firstSequence: UInt64

    public init(
        owner: AuthenticationName, state: State, connection: ConnectionNumber,
        protocolVersion: ProtocolVersion, cleanStart: Bool, expiryInterval: UInt32,
        sinceSequence: UInt64, sinceTime: Int64, firstSequence: UInt64
    ) {
        self.owner = owner
        self.state = state
        self.connection = connection
        self.protocolVersion = protocolVersion
        self.cleanStart = cleanStart
        self.expiryInterval = expiryInterval
        self.sinceSequence = sinceSequence
        self.sinceTime = sinceTime
        self.firstSequence = firstSequence
    }

    public var isConnected: Bool { state == .connected }

    public var deadline: Int64? {
        if case .disconnected(let deadline) = state { return deadline }
        return nil
    }

    /// Disconnected with its deadline reached: no longer live, waiting for its `expired` event.
    public func hasExpired(at now: Int64) -> Bool {
        if let deadline { return deadline <= now }
        return false
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.owner.value == rhs.owner.value && lhs.state == rhs.state && lhs.connection == rhs.connection
            && lhs.protocolVersion == rhs.protocolVersion && lhs.cleanStart == rhs.cleanStart
            && lhs.expiryInterval == rhs.expiryInterval && lhs.sinceSequence == rhs.sinceSequence
            && lhs.sinceTime == rhs.sinceTime && lhs.firstSequence == rhs.firstSequence
    }
}

/// The one definition of how an event changes a session. The LMDB projection and every
/// replay use it, so the stored projection and a replay of the log cannot disagree
/// unless the store was changed behind the ledger's back.
public enum SessionTransition {
    public static let microsecondsPerSecond: Int64 = 1_000_000

    /// The session after `event`; nil when the session is free afterwards.
    public static func apply(_ event: LedgerEvent, to entry: SessionEntry?) -> SessionEntry? {
        switch event.kind {
        case .rejected:
            return entry
        case .expired:
            return nil
        case .connected:
            let continues = entry != nil && !event.cleanStart
            return SessionEntry(
                owner: event.authenticationName, state: .connected, connection: event.connection,
                protocolVersion: event.protocolVersion, cleanStart: event.cleanStart,
                expiryInterval: event.expiryInterval, sinceSequence: event.sequence,
                sinceTime: event.timestamp,
                firstSequence: continues ? entry!.firstSequence : event.sequence)
        case .disconnected:
            // A session with expiry interval 0 ends with its connection (MQTT 5 §3.1.2.11.2).
            guard event.expiryInterval > 0, let entry else { return nil }
            var next = entry
            next.state = .disconnected(
                deadline: event.timestamp + Int64(event.expiryInterval) * microsecondsPerSecond)
            next.expiryInterval = event.expiryInterval
            next.sinceSequence = event.sequence
            next.sinceTime = event.timestamp
            return next
        }
    }
}

/// An in-memory projection built by folding the log: the reference the stored projection
/// is checked against, and the answer to "who owned what at sequence N / time T".
public struct OwnershipProjection: Sendable, Equatable {
    public private(set) var sessions: [SessionName: SessionEntry] = [:]
    /// Live sessions (connected or disconnected and not yet expired) by authentication-name key.
    public private(set) var liveSessionCounts: [String: Int] = [:]
    public private(set) var lastSequence: UInt64 = 0
    public private(set) var lastTimestamp: Int64 = 0

    public init() {}

    init(
        sessions: [SessionName: SessionEntry], liveSessionCounts: [String: Int], lastSequence: UInt64,
        lastTimestamp: Int64
    ) {
        self.sessions = sessions
        self.liveSessionCounts = liveSessionCounts
        self.lastSequence = lastSequence
        self.lastTimestamp = lastTimestamp
    }

    /// A projection from stored entries (the ledger's tables, or a checkpoint's), as of a
    /// sequence number; the live-session counts follow from the entries.
    public init(entries: [SessionName: SessionEntry], lastSequence: UInt64, lastTimestamp: Int64) {
        var counts: [String: Int] = [:]
        for entry in entries.values { counts[entry.owner.key, default: 0] += 1 }
        self.init(sessions: entries, liveSessionCounts: counts, lastSequence: lastSequence, lastTimestamp: lastTimestamp)
    }

    public mutating func apply(_ event: LedgerEvent) {
        lastSequence = event.sequence
        lastTimestamp = event.timestamp
        if case .rejected = event.kind { return }
        // One hash lookup per event: change the stored entry in place where there is one.
        if let index = sessions.index(forKey: event.sessionName) {
            let before = sessions.values[index]
            if let after = SessionTransition.apply(event, to: before) {
                sessions.values[index] = after
            } else {
                sessions.remove(at: index)
                let key = before.owner.key
                let remaining = (liveSessionCounts[key] ?? 0) - 1
                liveSessionCounts[key] = remaining > 0 ? remaining : nil
            }
        } else if let started = SessionTransition.apply(event, to: nil) {
            sessions[event.sessionName] = started
            liveSessionCounts[started.owner.key, default: 0] += 1
        }
    }

    /// Room for this many live sessions without growing (a replay knows the log's size).
    public mutating func reserveCapacity(_ sessionCount: Int) {
        sessions.reserveCapacity(sessionCount)
    }

    public func liveSessionCount(of client: AuthenticationName) -> Int {
        liveSessionCounts[client.key] ?? 0
    }

    /// Live sessions of one client, by session name.
    public func sessions(of client: AuthenticationName) -> [SessionName: SessionEntry] {
        sessions.filter { $0.value.owner == client }
    }

    /// The expiry index the store keeps, derived: the deadline key of every disconnected session.
    public var deadlineKeys: Set<[UInt8]> {
        var result = Set<[UInt8]>()
        for (name, entry) in sessions {
            if let deadline = entry.deadline {
                result.insert(ProjectionFormat.deadlineKey(deadline, sessionKey: ProjectionFormat.sessionKey(name)))
            }
        }
        return result
    }
}
