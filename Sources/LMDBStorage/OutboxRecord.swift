/// One event in a route's outbox (Routing), as the broker store's `routes` table keeps it.
///
/// Key: the route's name (UTF-8), 0x00, the event's number in the route (8 bytes, big endian):
/// one key range per route, in the order the events were accepted. Value: format 1 is the
/// byte 0x01, the time it was accepted (µs since the epoch, 8 bytes, big endian), then the
/// CloudEvent as JSON (UTF-8), sent as is on every attempt.
public struct OutboxRecord: Sendable, Equatable {
    public var route: String
    public var number: UInt64
    public var acceptedAt: Int64
    public var event: [UInt8]

    public init(route: String, number: UInt64, acceptedAt: Int64, event: [UInt8]) {
        self.route = route
        self.number = number
        self.acceptedAt = acceptedAt
        self.event = event
    }

    static let format: UInt8 = 1

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
        var value: [UInt8] = [Self.format]
        value.reserveCapacity(9 + event.count)
        withUnsafeBytes(of: acceptedAt.bigEndian) { value.append(contentsOf: $0) }
        value.append(contentsOf: event)
        return value
    }

    /// Bytes this record takes of the route's outbox limit.
    public var size: Int { event.count + 9 }

    public var put: BrokerStoreOperation { .put(.routes, key: key, value: value) }
    public var delete: BrokerStoreOperation { .delete(.routes, key: key) }

    /// nil: not a record of this format.
    public init?(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard key.count >= 10, key[key.count - 9] == 0, value.count >= 9, value[0] == Self.format else { return nil }
        guard let name = String(validating: key[..<(key.count - 9)], as: UTF8.self) else { return nil }
        route = name
        number = key[(key.count - 8)...].reduce(0) { $0 << 8 | UInt64($1) }
        acceptedAt = Int64(bitPattern: value[1..<9].reduce(0) { $0 << 8 | UInt64($1) })
        event = Array(value[9...])
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
