/// One level of an MQTT filter after substitution, kept as UTF-8 so that matching a PUBLISH
/// topic walks bytes without splitting the topic or allocating.
enum FilterLevel: Sendable, Equatable {
    case literal([UInt8])
    /// `+`
    case single
    /// `#` (always the last level)
    case multi

    var isWildcard: Bool { if case .literal = self { false } else { true } }

    var startsWithDollar: Bool {
        if case .literal(let bytes) = self { bytes.first == UInt8(ascii: "$") } else { false }
    }
}

enum TopicFilter {
    /// Splits a concrete MQTT filter; nil when it is not a valid filter (`#` not last or not a
    /// whole level, `+` not a whole level, NUL, empty).
    static func levels(of filter: String) -> [FilterLevel]? {
        if filter.isEmpty || filter.utf8.contains(0) { return nil }
        let parts = filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        var levels: [FilterLevel] = []
        levels.reserveCapacity(parts.count)
        for (index, part) in parts.enumerated() {
            if part.elementsEqual("#".utf8) {
                guard index == parts.count - 1 else { return nil }
                levels.append(.multi)
            } else if part.elementsEqual("+".utf8) {
                levels.append(.single)
            } else {
                if part.contains(UInt8(ascii: "+")) || part.contains(UInt8(ascii: "#")) { return nil }
                levels.append(.literal(Array(part)))
            }
        }
        return levels
    }

    /// Whether `topic` is a valid PUBLISH topic name: non-empty, no wildcard, no NUL.
    static func isValidTopicName(_ topic: String) -> Bool {
        !topic.isEmpty && !topic.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }
    }

    /// MQTT matching of a topic name by a filter, including MQTT's `$` rule (a filter starting
    /// with a wildcard does not match a topic starting with `$`) and `a/#` matching `a`.
    static func matches(_ levels: [FilterLevel], topic: String) -> Bool {
        if let result = topic.utf8.withContiguousStorageIfAvailable({ matches(levels, bytes: $0) }) {
            return result
        }
        return Array(topic.utf8).withUnsafeBufferPointer { matches(levels, bytes: $0) }
    }

    static func matches(_ levels: [FilterLevel], bytes topic: UnsafeBufferPointer<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/")
        var start = 0
        var exhausted = false
        for index in levels.indices {
            let level = levels[index]
            if case .multi = level {
                return !(index == 0 && topic.first == UInt8(ascii: "$"))
            }
            if exhausted { return false }
            var end = start
            while end < topic.count && topic[end] != slash { end += 1 }
            switch level {
            case .single:
                if index == 0 && end > start && topic[start] == UInt8(ascii: "$") { return false }
            case .literal(let bytes):
                guard bytes.count == end - start else { return false }
                var offset = 0
                while offset < bytes.count {
                    if bytes[offset] != topic[start + offset] { return false }
                    offset += 1
                }
            case .multi:
                break
            }
            if end == topic.count { exhausted = true } else { start = end + 1 }
        }
        return exhausted
    }

    /// Whether every topic `filter` matches, `template` matches too.
    ///
    /// MQTT's `$` rule carries over: a template starting with a wildcard matches no `$` topic,
    /// so it covers no filter starting with a `$` level (`#` does not cover `$SYS/#`); a literal
    /// `$SYS/#` template covers `$SYS/broker/+`. A filter starting with a wildcard matches no `$`
    /// topic, so its `$`-free topics are all a template needs to match.
    static func covers(_ template: [FilterLevel], _ filter: [FilterLevel]) -> Bool {
        if let first = filter.first, first.startsWithDollar, template.first?.isWildcard == true { return false }
        var index = 0
        while true {
            if index < template.count, case .multi = template[index] { return true }
            if index == template.count { return index == filter.count }
            if index == filter.count { return false }
            switch (template[index], filter[index]) {
            case (.single, .multi):
                // A `#` in the filter also matches the parent level, which `+` cannot stand for;
                // only a whole-topic `#` has no parent (a topic has at least one level), so `+/#` covers `#`.
                return index == 0 && template.count > 1 && template[1] == .multi
            case (.single, _): break
            case (.literal(let t), .literal(let f)): if t != f { return false }
            case (.literal, _): return false
            case (.multi, _): return true
            }
            index += 1
        }
    }

    /// Whether some topic is matched by both filters; used to refuse a subscription that would
    /// receive messages a Mosquitto `deny` line forbids.
    static func overlaps(_ a: [FilterLevel], _ b: [FilterLevel]) -> Bool {
        if let first = a.first, first.startsWithDollar, b.first?.isWildcard == true { return false }
        if let first = b.first, first.startsWithDollar, a.first?.isWildcard == true { return false }
        var index = 0
        while true {
            if index < a.count, case .multi = a[index] { return true }
            if index < b.count, case .multi = b[index] { return true }
            if index == a.count || index == b.count { return a.count == b.count }
            switch (a[index], b[index]) {
            case (.literal(let x), .literal(let y)): if x != y { return false }
            default: break
            }
            index += 1
        }
    }

    /// Strips `$share/NAME/` from a shared subscription; nil when it is malformed.
    static func unshared(_ filter: String) -> String? {
        let prefix = "$share/"
        guard filter.hasPrefix(prefix) else { return filter }
        let rest = filter.dropFirst(prefix.count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let name = rest[..<slash]
        if name.isEmpty || name.contains("+") || name.contains("#") { return nil }
        let inner = rest[rest.index(after: slash)...]
        return inner.isEmpty ? nil : String(inner)
    }
}

/// One concrete MQTT filter (no templates), for whoever matches topics outside the broker's
/// tree: routes, say.
public struct MQTTTopicFilter: Sendable, Equatable {
    public let text: String
    let levels: [FilterLevel]

    /// nil when `text` is not a valid filter (`#` not last or not a whole level, `+` not a
    /// whole level, NUL, empty).
    public init?(_ text: String) {
        guard let levels = TopicFilter.levels(of: text) else { return nil }
        self.text = text
        self.levels = levels
    }

    /// MQTT matching, `$` rule included.
    public func matches(_ topic: String) -> Bool {
        TopicFilter.matches(levels, topic: topic)
    }

    /// Whether `topic` is a valid PUBLISH topic name: non-empty, no wildcard, no NUL.
    public static func isValidTopicName(_ topic: String) -> Bool {
        TopicFilter.isValidTopicName(topic)
    }
}
