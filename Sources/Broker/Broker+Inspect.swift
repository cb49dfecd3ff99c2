// Read-only views for metrics, tools and tests: one pass under the lock each.
import LedgerCore

/// What the broker holds for one session; for tests, tools and logs.
public struct BrokerSessionInfo: Sendable, Equatable {
    public var attached: Bool
    public var persistent: Bool
    /// Topic filters, sorted.
    public var subscriptions: [String]
    /// Messages waiting for a free slot in the in-flight window (or for the client to return).
    public var queued: Int
    /// Their payload bytes (`BrokerLimits.queueMaxBytes`).
    public var queuedBytes: Int
    /// Messages sent (or to be sent) and not yet acknowledged, plus PUBRELs not yet completed.
    public var inflight: Int
    /// Messages dropped because the queue was full (`dropOldest`).
    public var dropped: Int
    /// Inbound QoS 2 packet identifiers awaiting PUBREL.
    public var inboundAwaitingRelease: Int
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    public var discardedTooLarge: Int
    /// Queued messages dropped because their Message Expiry Interval passed first.
    public var expired: Int
    /// A will message waits for its Will Delay Interval.
    public var willPending: Bool
}

extension Broker {
    /// Figures over every session, for metrics (one pass under the lock).
    public struct Totals: Sendable, Equatable {
        public var sessions = 0
        public var attached = 0
        /// Messages waiting in queues (not yet in flight).
        public var queued = 0
        /// Messages sent and not yet acknowledged.
        public var inflight = 0
        public var retained = 0
        /// Since the broker started: dropped from full queues, expired in queues (Message
        /// Expiry), not sent because larger than the client's Maximum Packet Size.
        public var droppedQueueFull = 0
        public var droppedExpired = 0
        public var droppedTooLarge = 0
        public var willsPublished = 0
        public var serverPublished = 0

        public init() {}
    }

    public var totals: Totals {
        locked {
            var totals = Totals()
            totals.sessions = sessions.count
            for state in sessions.values {
                if state.attachment != 0 { totals.attached += 1 }
                totals.queued += state.queue.count
                totals.inflight += state.inflight.count
            }
            totals.retained = retained.count
            totals.droppedQueueFull = droppedQueueFull
            totals.droppedExpired = droppedExpired
            totals.droppedTooLarge = droppedTooLarge
            totals.willsPublished = willsPublished
            totals.serverPublished = serverPublished
            return totals
        }
    }

    /// Copies of shared-subscription messages moved to another member because the session
    /// they were chosen for ended first, since the broker started.
    public var redistributedShares: Int { locked { redistributed } }

    /// Will messages published since the broker started.
    public var publishedWills: Int { locked { willsPublished } }

    /// Whether state for `name` is kept with no connection attached (what `endSession` drops).
    public func hasDetachedSession(_ name: SessionName) -> Bool {
        locked { sessions[name].map { $0.attachment == 0 } ?? false }
    }

    /// Names of the sessions the broker holds state for (attached or not).
    public var sessionNames: Set<SessionName> {
        locked { Set(sessions.keys) }
    }

    public func info(_ name: SessionName) -> BrokerSessionInfo? {
        locked {
            guard let state = sessions[name] else { return nil }
            return BrokerSessionInfo(
                attached: state.attachment != 0, persistent: state.persistent,
                subscriptions: state.subscriptions.keys.sorted(), queued: state.queue.count, queuedBytes: state.queuedBytes,
                inflight: state.inflight.count, dropped: state.dropped,
                inboundAwaitingRelease: state.inboundQoS2.count, discardedTooLarge: state.discarded,
                expired: state.expired, willPending: state.pendingWill != nil)
        }
    }
}
