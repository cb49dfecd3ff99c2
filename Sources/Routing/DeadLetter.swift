import Broker
import CustodyConfig
import Foundation
import LMDBStorage
import LedgerCore
import NIOCore

/// Why an event was dead-lettered.
public enum DeadLetterReason: String, Sendable {
    /// The endpoint answered a 4xx other than 408 and 429.
    case rejected
    /// `retry.maxAttempts` attempts failed.
    case maxAttempts
    /// It was older than `retry.maxAgeMinutes` when an attempt failed.
    case maxAge
    /// The route's outbox was at its limit when the event came.
    case outboxFull
}

/// Where a route's undeliverable events go: one JSON object each, the event with why it was
/// given up (`reason`, `attempts`, `lastStatus`, `error`) and when.
struct DeadLetterSink: Sendable {
    let route: String
    let target: RouteConfiguration.DeadLetter
    let broker: Broker

    /// The dead-letter entry of `record`.
    func entry(_ record: OutboxRecord, reason: DeadLetterReason, attempts: Int, lastStatus: Int?, error: String?) -> [UInt8] {
        var j = JSONObject(into: [])
        j.string("route", route)
        j.int("number", record.number)
        j.time("deadLetteredAt", wallClockMicroseconds())
        j.time("acceptedAt", record.acceptedAt)
        j.string("reason", reason.rawValue)
        j.int("attempts", attempts)
        j.int("lastStatus", lastStatus)
        j.string("error", error)
        j.object("event", record.event)
        return j.close()
    }

    /// Writes the entries; throws when a file cannot be written (the events then stay in the
    /// outbox and are tried again).
    func write(_ records: [OutboxRecord], reason: DeadLetterReason, attempts: Int, lastStatus: Int?, error: String?) throws {
        switch target {
        case .directory(let directory):
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for record in records {
                let bytes = entry(record, reason: reason, attempts: attempts, lastStatus: lastStatus, error: error)
                let path = (directory as NSString).appendingPathComponent(Self.fileName(route: route, number: record.number))
                try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
            }
        case .topic(let topic):
            for record in records {
                let bytes = entry(record, reason: reason, attempts: attempts, lastStatus: lastStatus, error: error)
                broker.publishFromServer(topic: topic, payload: ByteBuffer(bytes: bytes), qos: .atLeastOnce)
            }
        }
    }

    /// The highest number of `route`'s entries in `directory` (0: none, or no directory).
    static func highestNumber(route: String, in directory: String) -> UInt64 {
        let prefix = route + "-"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.reduce(0) { highest, name in
            guard name.hasPrefix(prefix), name.hasSuffix(".json"),
                let number = UInt64(name.dropFirst(prefix.count).dropLast(5))
            else { return highest }
            return max(highest, number)
        }
    }

    /// `ROUTE-NUMBER.json`, the number zero-padded so that names sort in order.
    static func fileName(route: String, number: UInt64) -> String {
        let digits = String(number)
        return "\(route)-\(String(repeating: "0", count: max(0, 20 - digits.count)))\(digits).json"
    }
}
