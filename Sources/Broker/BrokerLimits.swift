/// What one session may take of the broker (README "Limits"). Each limit is named by its key
/// under `limits:` in custody's configuration file (`BrokerLimit`), which is also the label of
/// `custody_limit_exceeded_total` when it refuses or cuts something.
public struct BrokerLimits: Sendable, Equatable {
    /// Topic filters one session may hold (shared ones included); a SUBSCRIBE for a new filter
    /// past it gets 0x97 Quota exceeded (v3.1.1: 0x80) for that filter. Re-subscribing a filter
    /// the session holds replaces it and is always allowed. Event Grid's limit.
    public var maxSubscriptionsPerSession = 50
    /// Largest retained payload, bytes (Event Grid: 64 KB).
    public var maxRetainedBytes = 64 << 10
    /// Most topics with a retained message; replacing or deleting one is always allowed.
    public var maxRetainedMessages = 100_000
    /// Most messages one session's queue holds (waiting for a detached persistent session,
    /// or behind the in-flight window of a connected one); in-flight ones are not counted.
    public var queueMaxMessages = 1_000
    /// Most payload bytes one session's queue holds.
    public var queueMaxBytes = 16 << 20
    /// What a queue that would pass either bound does.
    public var queueOverflow = QueueOverflowPolicy.dropOldest

    public init(
        maxSubscriptionsPerSession: Int = 50, maxRetainedBytes: Int = 64 << 10, maxRetainedMessages: Int = 100_000,
        queueMaxMessages: Int = 1_000, queueMaxBytes: Int = 16 << 20, queueOverflow: QueueOverflowPolicy = .dropOldest
    ) {
        precondition(maxSubscriptionsPerSession >= 1 && maxRetainedBytes >= 1 && maxRetainedMessages >= 1,
                     "limits of at least one")
        precondition(queueMaxMessages >= 1 && queueMaxBytes >= 1, "a queue holds at least one message")
        self.maxSubscriptionsPerSession = maxSubscriptionsPerSession
        self.maxRetainedBytes = maxRetainedBytes
        self.maxRetainedMessages = maxRetainedMessages
        self.queueMaxMessages = queueMaxMessages
        self.queueMaxBytes = queueMaxBytes
        self.queueOverflow = queueOverflow
    }
}

/// What a session queue that is full does with one more message.
public enum QueueOverflowPolicy: String, Sendable, CaseIterable {
    /// The oldest queued messages go (never one in flight), counted as dropped
    /// (`queue_full`): a device back after a long absence gets the latest state rather than a
    /// stale backlog.
    case dropOldest
    /// The session ends, as Event Grid ends it (SessionOverflow): the broker stops queueing
    /// for it and tells its `BrokerObserver`, which records the end and drops the state.
    case endSession
}

/// A limit by its configuration key (the label value of `custody_limit_exceeded_total`).
public enum BrokerLimit: String, Sendable, CaseIterable {
    case maxSubscriptionsPerSession
    case maxRetainedBytes
    case maxRetainedMessages
    case queueMaxMessages
    case queueMaxBytes
}
