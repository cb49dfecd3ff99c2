import CustodyModel
import Foundation

/// One route (issue 21): which messages and lifecycle events go, as CloudEvents, to which HTTP
/// endpoint, how they are retried and where those that cannot be delivered go.
public struct RouteConfiguration: Sendable, Equatable {
    /// How events are put in requests (CloudEvents 1.0 HTTP binding).
    public enum Mode: String, Sendable, CaseIterable {
        /// One event a request, `application/cloudevents+json`.
        case structured
        /// One event a request, its attributes as `ce-*` headers and its data as the body.
        case binary
        /// Up to `maxBatchEvents` a request, `application/cloudevents-batch+json`.
        case batch
    }

    /// Where an event goes when it cannot be delivered.
    public enum DeadLetter: Sendable, Equatable {
        /// One JSON file per event in this directory (created when missing).
        case directory(String)
        /// Published (QoS 1, not retained) on this topic.
        case topic(String)
    }

    /// Unique among the routes: `[A-Za-z0-9_-]`, 1-64 characters (metrics label, store key).
    public var name: String
    public var topicFilters: [String] = []
    public var lifecycleEvents = false
    public var endpoint: URL
    public var allowInsecure = false
    public var mode: Mode = .structured
    public var maxBatchEvents = 100
    /// Batch mode: how long the oldest event of a batch that is not full may wait for more
    /// (from its acceptance), so that a steady stream goes in full requests, not many small ones.
    public var maxBatchWaitMilliseconds = 5
    /// Request headers, `${env:VAR}` already replaced by the variable's value.
    public var headers: [(name: String, value: String)] = []
    public var maxAttempts = 30
    public var maxAgeMinutes = 1440
    /// Extension attributes added to every event of the route.
    public var staticEnrichments: [(name: String, value: String)] = []
    /// Client attributes (the registry's, a token's) added as extension attributes of the same name.
    public var enrichmentsFromClientAttributes: [String] = []
    public var deadLetter: DeadLetter
    /// The outbox of the route holds at most this many events and bytes; past either, new
    /// events go straight to dead-letter.
    public var maxOutboxEvents = 100_000
    public var maxOutboxBytes = 256 << 20
    /// Seconds one request may take.
    public var timeoutSeconds = 30

    public init(name: String, endpoint: URL, deadLetter: DeadLetter) {
        self.name = name
        self.endpoint = endpoint
        self.deadLetter = deadLetter
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.name == rhs.name && lhs.topicFilters == rhs.topicFilters && lhs.lifecycleEvents == rhs.lifecycleEvents
            && lhs.endpoint == rhs.endpoint && lhs.allowInsecure == rhs.allowInsecure && lhs.mode == rhs.mode
            && lhs.maxBatchEvents == rhs.maxBatchEvents && lhs.maxBatchWaitMilliseconds == rhs.maxBatchWaitMilliseconds
            && lhs.headers.elementsEqual(rhs.headers, by: ==)
            && lhs.maxAttempts == rhs.maxAttempts && lhs.maxAgeMinutes == rhs.maxAgeMinutes
            && lhs.staticEnrichments.elementsEqual(rhs.staticEnrichments, by: ==)
            && lhs.enrichmentsFromClientAttributes == rhs.enrichmentsFromClientAttributes
            && lhs.deadLetter == rhs.deadLetter && lhs.maxOutboxEvents == rhs.maxOutboxEvents
            && lhs.maxOutboxBytes == rhs.maxOutboxBytes && lhs.timeoutSeconds == rhs.timeoutSeconds
    }

    public static let maxBatchEventsRange = 1...1000
    public static let maxBatchWaitMillisecondsRange = 0...10_000
    public static let maxAttemptsRange = 1...100
    public static let maxAgeMinutesRange = 1...1440
    public static let maxOutboxEventsRange = 1...100_000_000
    public static let timeoutSecondsRange = 1...300

    /// A valid route name.
    public static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || isAlphanumeric($0) }
    }

    /// A CloudEvents extension attribute name: lower-case ASCII letters and digits, 1-20.
    public static func isValidAttributeName(_ name: String) -> Bool {
        (1...20).contains(name.utf8.count)
            && name.utf8.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    /// Replaces every `${env:VAR}` of `text` by the variable's value; the name of the first
    /// variable that is not set, as the error.
    public static func expandEnvironment(_ text: String, _ environment: [String: String]) -> Result<String, MissingVariable> {
        var result = ""
        var rest = Substring(text)
        while let start = rest.range(of: "${env:") {
            result += rest[..<start.lowerBound]
            guard let end = rest[start.upperBound...].firstIndex(of: "}") else {
                return .failure(MissingVariable(name: String(rest[start.upperBound...]), unterminated: true))
            }
            let name = String(rest[start.upperBound..<end])
            guard let value = environment[name] else { return .failure(MissingVariable(name: name, unterminated: false)) }
            result += value
            rest = rest[rest.index(after: end)...]
        }
        return .success(result + rest)
    }

    public struct MissingVariable: Error, Equatable {
        public var name: String
        public var unterminated: Bool
    }
}
