import Foundation
import MQTTCodec
import NIOCore
import Testing

// What the end-to-end tests of the limits share: topic names of a given size, the counts of
// `custody_limit_exceeded_total`, a client that hears nothing, the "limit exceeded" lines.

/// A topic name of exactly `bytes` bytes in `levels` levels.
func limitTopic(bytes: Int, levels: Int = 1) -> String {
    precondition(bytes >= 2 * levels - 1, "\(levels) levels need \(2 * levels - 1) bytes")
    var parts = Array(repeating: 1, count: levels)
    parts[0] += bytes - (2 * levels - 1)
    return parts.map { String(repeating: "t", count: $0) }.joined(separator: "/")
}

extension RunningCustody {
    /// The address of `--metrics 127.0.0.1:0`, from the start-up line.
    func metricsAddress() throws -> String {
        guard let line = stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: metrics http://") }) else {
            throw E2EError.unexpected("no metrics line (start custody with --metrics 127.0.0.1:0): \(stdout)")
        }
        return String(line.dropFirst("custody: metrics http://".count).dropLast("/metrics".count))
    }

    /// `custody_limit_exceeded_total{limit="<limit>"}` now (0 before the first).
    func limitExceeded(_ limit: String) throws -> Int {
        let text = try run("/usr/bin/curl", ["-s", "http://\(try metricsAddress())/metrics"]).1
        let prefix = "custody_limit_exceeded_total{limit=\"\(limit)\"} "
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
        return Int(Double(line.dropFirst(prefix.count)) ?? 0)
    }

    /// The "limit exceeded" lines written for `limit`.
    func limitLines(_ limit: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.contains("limit exceeded") && $0.contains("limit=\(limit) ") }
    }
}

extension RawClient {
    /// Subscribes to `filter` at QoS 0 and waits for the SUBACK.
    func subscribe(_ filter: String, id: UInt16 = 1) throws {
        try send(.subscribe(MQTTSubscribe(packetIdentifier: id, subscriptions: [MQTTSubscription(topicFilter: filter)])))
        guard case .suback? = try receive() else { throw E2EError.unexpected("no SUBACK for \(filter)") }
    }

    /// True when nothing at all comes for `seconds` (and the connection stays open).
    func hearsNothing(for seconds: Double) throws -> Bool {
        do {
            let packet = try receive(timeout: seconds)
            Issue.record("expected silence, got \(packet.map { "\($0)" } ?? "a close")")
            return false
        } catch TestFailure.timeout {
            return true
        }
    }

    /// The reason code of the PUBACK or PUBREC that comes next (0x10 No matching subscribers is
    /// as much a success as 0x00); nil for anything else.
    func publishAnswer() throws -> MQTTReasonCode? {
        switch try receive() {
        case .puback(let answer)?, .pubrec(let answer)?: answer.reasonCode
        default: nil
        }
    }

    /// Still served: a PINGREQ is answered.
    func isServed() throws -> Bool {
        try send(.pingreq)
        return try receive() == .pingresp
    }

    /// The PUBLISHes that come within `seconds`, until `count` of them came.
    func publishes(_ count: Int, within seconds: Double) throws -> [MQTTPublish] {
        var got: [MQTTPublish] = []
        let deadline = Date().addingTimeInterval(seconds)
        while got.count < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { break }
            guard let packet = try? receive(timeout: left) else { break }
            if case .publish(let publish) = packet { got.append(publish) }
        }
        return got
    }
}
