import LMDBStorage

/// The store writes one broker decision makes, and the deliveries that must wait for them.
///
/// Built under the lock and handed to the store in one `submit`, so that the writer sees
/// writes in the order the broker decided them. A delivery to a persistent session is
/// `heldUntilCommit`: it is sent only once its record is durable, so that no client gets a
/// message a crash could make the broker forget. A value type on purpose: a batch lives on the
/// stack of one decision, and its arrays allocate only when something is written.
///
/// What the decision changed in memory ahead of the commit, and that the commit's failure
/// would leave the store without (or still with), is logged in `undoLog`: `Broker.undo` puts
/// it back when the commit fails.
struct StoreBatch {
    private(set) var operations: [BrokerStoreOperation] = []
    private(set) var heldUntilCommit: [(session: SessionState, delivery: OutboundMessage)] = []
    private(set) var undoLog: [Undo] = []
    /// Told of the commit (true: durable) after it, in order: the publish tap's captures.
    private(set) var afterCommit: [@Sendable (Bool) -> Void] = []

    /// One change in memory whose write is in this batch.
    enum Undo {
        /// A delivery stored for a persistent session and queued (or put in flight), not sent.
        case held(SessionState, OutboundMessage)
        /// A queued delivery dropped to make room (`dropOldest`); `storeKey`: its message's
        /// key before the drop (the drop may have deleted the stored copy).
        case dropped(SessionState, OutboundMessage, storeKey: UInt64)
        /// A subscription added or replaced; `previous`: what it replaced.
        case subscribed(SessionState, filter: String, added: Subscriber, previous: Subscriber?)
        /// A subscription removed.
        case unsubscribed(SessionState, filter: String, removed: Subscriber)
        /// A topic's retained message set (`kept`) or deleted (nil); `previous`: what was there.
        case retained(topic: String, kept: Message?, previous: Message?)
    }

    var isEmpty: Bool { operations.isEmpty }

    mutating func put(_ table: BrokerTable, key: [UInt8], value: [UInt8]) {
        operations.append(.put(table, key: key, value: value))
    }

    mutating func delete(_ table: BrokerTable, key: [UInt8]) {
        operations.append(.delete(table, key: key))
    }

    /// A put under `prefix` + `number` (big endian): the prefix array is shared, not copied.
    mutating func putNumbered(_ table: BrokerTable, prefix: [UInt8], number: UInt64, value: [UInt8]) {
        operations.append(.putNumbered(table, prefix: prefix, number: number, value: value))
    }

    mutating func deleteNumbered(_ table: BrokerTable, prefix: [UInt8], number: UInt64) {
        operations.append(.deleteNumbered(table, prefix: prefix, number: number))
    }

    mutating func deletePrefix(_ table: BrokerTable, prefix: [UInt8]) {
        operations.append(.deletePrefix(table, prefix: prefix))
    }

    /// A tap's writes, and whom to tell of their commit.
    mutating func add(_ capture: TapCapture) {
        operations += capture.operations
        afterCommit.append(capture.committed)
    }

    mutating func hold(_ delivery: OutboundMessage, for session: SessionState) {
        heldUntilCommit.append((session, delivery))
        undoLog.append(.held(session, delivery))
    }

    /// What to put back if this batch's commit fails.
    mutating func undoOnFailure(_ undo: Undo) {
        undoLog.append(undo)
    }

    /// The held deliveries, which the batch then no longer releases: for a caller that sends
    /// them itself after the commit (a SUBSCRIBE returns its retained messages after its SUBACK).
    /// A failed commit still takes them back (`undoLog`).
    mutating func takeHeld() -> [(session: SessionState, delivery: OutboundMessage)] {
        defer { heldUntilCommit = [] }
        return heldUntilCommit
    }
}
