// MQTT topics and filters as NATS subjects, and back.
//
// A topic level becomes a token. What NATS gives a meaning to is escaped with `%` and two hex
// digits: `.` (the token separator), `*` and `>` (wildcards), space, tab and every other ASCII
// control character (the protocol's separators), and `%` itself; an empty level (MQTT allows
// `a//b`, `/a`) becomes the token `%` alone, which no escaped level can be. Everything else,
// UTF-8 included, stays as it is, so subjects stay readable. In a filter, `+` becomes `*` and
// `#` becomes `>`; MQTT's `a/#` also matches `a` itself, which NATS's `a.>` does not, so such
// a filter maps to two subjects.

/// The mapping, under a prefix (`custody.m`): `subject(topic:)` and `topic(subject:)` are inverse.
public struct SubjectMapping: Sendable, Equatable {
    /// Tokens before the topic's, without a trailing dot; empty for none.
    public let prefix: String

    public init(prefix: String) { self.prefix = prefix }

    static let escape = UInt8(ascii: "%")

    static func needsEscape(_ byte: UInt8) -> Bool {
        byte <= 0x20 || byte == 0x7F || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "*")
            || byte == UInt8(ascii: ">") || byte == escape
    }

    /// One MQTT topic level as a NATS token.
    public static func token(level: Substring) -> String {
        if level.isEmpty { return "%" }
        guard level.utf8.contains(where: needsEscape) else { return String(level) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(level.utf8.count + 8)
        for byte in level.utf8 {
            if needsEscape(byte) {
                bytes.append(escape)
                bytes.append(hex(byte >> 4))
                bytes.append(hex(byte & 0x0F))
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The level a token stands for; nil when the token is not one this mapping makes.
    public static func level(token: Substring) -> String? {
        if token == "%" { return "" }
        guard !token.isEmpty else { return nil }
        guard token.utf8.contains(escape) else { return String(token) }
        var bytes: [UInt8] = []
        var iterator = token.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == escape else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(unhex), let low = iterator.next().flatMap(unhex) else { return nil }
            let decoded = high << 4 | low
            // Only what must be escaped is, so that every topic has exactly one subject.
            guard needsEscape(decoded) else { return nil }
            bytes.append(decoded)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    /// The subject of an MQTT topic name.
    public func subject(topic: String) -> String {
        let tokens = topic.split(separator: "/", omittingEmptySubsequences: false).map(Self.token(level:))
        let body = tokens.joined(separator: ".")
        return prefix.isEmpty ? body : prefix + "." + body
    }

    /// The MQTT topic name of a subject this mapping made; nil for any other subject.
    public func topic(subject: String) -> String? {
        var rest = Substring(subject)
        if !prefix.isEmpty {
            guard rest.hasPrefix(prefix + ".") else { return nil }
            rest = rest.dropFirst(prefix.count + 1)
        }
        var levels: [String] = []
        for token in rest.split(separator: ".", omittingEmptySubsequences: false) {
            guard let level = Self.level(token: token) else { return nil }
            levels.append(level)
        }
        return levels.joined(separator: "/")
    }

    /// The subjects whose union matches what the MQTT filter matches: `+` as `*`, `#` as `>`,
    /// and for `F/#` the subject of `F` as well (MQTT's `#` also matches its parent level).
    public func subjects(filter: String) -> [String] {
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        let tokens = levels.map { level -> String in
            switch level {
            case "+": "*"
            case "#": ">"
            default: Self.token(level: level)
            }
        }
        let lead = prefix.isEmpty ? "" : prefix + "."
        var subjects = [lead + tokens.joined(separator: ".")]
        if levels.last == "#", tokens.count > 1 { subjects.append(lead + tokens.dropLast().joined(separator: ".")) }
        return subjects
    }

    static func hex(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "A") + nibble - 10
    }

    static func unhex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
