import LMDBStorage

/// The store writes one broker decision makes, and the deliveries that must wait for them.
///
/// Built under the lock and handed to the store in one `submit`, so that the writer sees
/// writes in the order the broker decided them. A delivery to a persistent session is
/// `heldUntilCommit`: it is sent only once its record is durable, so that no client gets a
/// message a crash could make the broker forget. A value type on purpose: a batch lives on the
/// stack of one decision, and its arrays allocate only when something is written.
struct StoreBatch {
    private(set) var operations: [BrokerStoreOperation] = []
    private(set) var heldUntilCommit: [(session: SessionState, delivery: OutboundMessage)] = []

    var isEmpty: Bool { operations.isEmpty }

    mutating func put(_ table: BrokerTable, key: [UInt8], value: [UInt8]) {
        operations.append(.put(table, key: key, value: value))
    }

    mutating func delete(_ table: BrokerTable, key: [UInt8]) {
        operations.append(.delete(table, key: key))
    }

    mutating func deletePrefix(_ table: BrokerTable, prefix: [UInt8]) {
        operations.append(.deletePrefix(table, prefix: prefix))
    }

    mutating func hold(_ delivery: OutboundMessage, for session: SessionState) {
        heldUntilCommit.append((session, delivery))
    }

    /// The held deliveries, which the batch then no longer releases: for a caller that sends
    /// them itself after the commit (a SUBSCRIBE returns its retained messages after its SUBACK).
    mutating func takeHeld() -> [(session: SessionState, delivery: OutboundMessage)] {
        defer { heldUntilCommit = [] }
        return heldUntilCommit
    }
}
