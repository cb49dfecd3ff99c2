/// One event in a route's outbox (Routing), as the broker store's `routes` table keeps it.
///
/// Key: the route's name (UTF-8), 0x00, the event's number in the route (8 bytes, big endian):
/// one key range per route, in the order the events were accepted. Value: format 1 is the
/// byte 0x01, the time it was accepted (µs since the epoch, 8 bytes, big endian), then the
/// event: its CloudEvent as JSON (UTF-8, beginning with `{`), or, for a routed message, the
/// compact form its JSON is made from when sent (0x01 or 0x02 first: Routing's `StoredEvent`); every
/// attempt sends the same event. Format 2, written once an attempt
/// failed, puts the failed attempts so far (4 bytes, big endian) after the time, so that a
/// restart does not give an event its `retry.maxAttempts` anew.
public struct OutboxRecord: Sendable, Equatable {
    public var route: String
    public var number: UInt64
    public var acceptedAt: Int64
    public var event: [UInt8]
    /// Attempts that failed (kept in the store from the first failure on).
    public var attempts: UInt32
    /// false: a best-effort event (a QoS 0 message's) that lives in memory only.
    public var inStore: Bool

    public init(route: String, number: UInt64, acceptedAt: Int64, event: [UInt8], attempts: UInt32 = 0, inStore: Bool = true) {
        self.route = route
        self.number = number
        self.acceptedAt = acceptedAt
        self.event = event
        self.attempts = attempts
        self.inStore = inStore
    }

    static let format: UInt8 = 1
    static let formatWithAttempts: UInt8 = 2

    public var key: [UInt8] { Self.key(route: route, number: number) }

    public static func key(route: String, number: UInt64) -> [UInt8] {
        var key = prefix(route: route)
        withUnsafeBytes(of: number.bigEndian) { key.append(contentsOf: $0) }
        return key
    }

    /// Every key of `route` starts with this.
    public static func prefix(route: String) -> [UInt8] {
        Array(route.utf8) + [0]
    }

    public var value: [UInt8] {
        var value: [UInt8] = [attempts == 0 ? Self.format : Self.formatWithAttempts]
        value.reserveCapacity(13 + event.count)
        withUnsafeBytes(of: acceptedAt.bigEndian) { value.append(contentsOf: $0) }
        if attempts > 0 { withUnsafeBytes(of: attempts.bigEndian) { value.append(contentsOf: $0) } }
        value.append(contentsOf: event)
        return value
    }

    /// Bytes this record takes of the route's outbox limit.
    public var size: Int { event.count + 9 }

    public var put: BrokerStoreOperation { .put(.routes, key: key, value: value) }
    public var delete: BrokerStoreOperation { .delete(.routes, key: key) }

    /// nil: not a record of this format.
    public init?(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard key.count >= 10, key[key.count - 9] == 0, value.count >= 9 else { return nil }
        let eventStart: Int
        switch value[0] {
        case Self.format:
            attempts = 0
            eventStart = 9
        case Self.formatWithAttempts where value.count >= 13:
            attempts = UInt32(value[9..<13].reduce(0) { $0 << 8 | UInt64($1) })
            eventStart = 13
        default:
            return nil
        }
        guard let name = String(validating: key[..<(key.count - 9)], as: UTF8.self) else { return nil }
        route = name
        number = key[(key.count - 8)...].reduce(0) { $0 << 8 | UInt64($1) }
        acceptedAt = Int64(bitPattern: value[1..<9].reduce(0) { $0 << 8 | UInt64($1) })
        event = Array(value[eventStart...])
        inStore = true
    }

    /// Every record of the store's outboxes, in key order (route by route, in order).
    public static func all(in store: BrokerStore) throws -> [OutboxRecord] {
        var records: [OutboxRecord] = []
        try store.forEach(.routes) { key, value in
            if let record = OutboxRecord(key: key, value: value) { records.append(record) }
        }
        return records
    }
}

/// The last ledger sequence number whose lifecycle events the routes took, kept in the
/// `routes` table in the same write as those events' outbox records: after a crash between
/// the ledger's commit and that write, the routes read the ledger again from there.
///
/// Key: the byte 0x00 then `lifecycle` (10 bytes; no outbox key starts with 0x00, since a
/// route's name is not empty). Value: the byte 0x01, then the sequence number (8 bytes, big endian).
public enum LifecycleRouteCursor {
    public static let key: [UInt8] = [0] + Array("lifecycle".utf8)

    public static func put(_ sequence: UInt64) -> BrokerStoreOperation {
        var value: [UInt8] = [1]
        withUnsafeBytes(of: sequence.bigEndian) { value.append(contentsOf: $0) }
        return .put(.routes, key: key, value: value)
    }

    /// nil: never written.
    public static func read(in store: BrokerStore) throws -> UInt64? {
        guard let value = try store.value(.routes, key: key), value.count == 9, value[0] == 1 else { return nil }
        return value[1...].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
