/// A topic template: an MQTT filter whose levels may hold client variables.
///
/// Event Grid's variables are `${client.authenticationName}` and `${client.attributes.KEY}`;
/// Mosquitto's `%u` and `%c` (see ``MosquittoACL``) compile to the same parts. A variable may
/// be a whole level or part of one; it never spans levels, because it is substituted inside one
/// level and a value holding `/` voids the template.
///
/// Substitution is guarded against injection: a value that is empty, holds `/`, `+`, `#` or NUL,
/// or starts a level with `$`, makes the template match NOTHING for that client — so an
/// authentication name `#` cannot turn `devices/${client.authenticationName}/#` into `devices/#/#`.
/// A client without the attribute gets nothing from the template, and neither does an array
/// attribute (Event Grid substitutes single values only); an integer substitutes its decimal form.
public struct TopicTemplate: Sendable, Equatable, CustomStringConvertible {
    /// The template as written.
    public let text: String
    let levels: [TemplateLevel]

    /// Compiles `text`; throws a ``TemplateError`` on bad variable syntax, a `#` that is not the
    /// last level, a wildcard that is not a whole level, NUL, or an empty template.
    public init(_ text: String) throws(TemplateError) {
        self.text = text
        self.levels = try TemplateParser.parse(text, mosquittoVariables: false)
    }

    init(text: String, levels: [TemplateLevel]) {
        self.text = text
        self.levels = levels
    }

    public var description: String { text }

    /// Whether the template holds no variable (its substitution never fails).
    public var isConstant: Bool {
        levels.allSatisfy { level in
            if case .parts(let parts) = level { parts.allSatisfy { if case .literal = $0 { true } else { false } } } else { true }
        }
    }

    /// The filter this template is for `facts`, or nil when it matches nothing for this client.
    func substituted(for facts: ClientFacts) -> [FilterLevel]? {
        var result: [FilterLevel] = []
        result.reserveCapacity(levels.count)
        for level in levels {
            switch level {
            case .single: result.append(.single)
            case .multi: result.append(.multi)
            case .parts(let parts):
                var bytes: [UInt8] = []
                for (index, part) in parts.enumerated() {
                    let value: String
                    switch part {
                    case .literal(let text):
                        bytes.append(contentsOf: text.utf8)
                        continue
                    case .authenticationName: value = facts.authenticationName
                    case .sessionName: value = facts.sessionName
                    case .attribute(let key):
                        switch facts.attributes[key] {
                        case .string(let text): value = text
                        case .int(let number): value = String(number)
                        case .strings, nil: return nil
                        }
                    }
                    guard Self.isSafe(value, startsLevel: index == 0) else { return nil }
                    bytes.append(contentsOf: value.utf8)
                }
                result.append(.literal(bytes))
            }
        }
        return result
    }

    /// The injection guard.
    static func isSafe(_ value: String, startsLevel: Bool) -> Bool {
        if value.isEmpty { return false }
        if startsLevel && value.utf8.first == UInt8(ascii: "$") { return false }
        return !value.utf8.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }
    }
}

/// A template that does not compile.
public struct TemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    public let template: String
    public let reason: String
    public var description: String { "topic template '\(template)': \(reason)" }
}

enum TemplateLevel: Sendable, Equatable {
    case single
    case multi
    case parts([TemplatePart])
}

enum TemplatePart: Sendable, Equatable {
    case literal(String)
    case authenticationName
    case sessionName
    case attribute(String)
}

enum TemplateParser {
    /// With `mosquittoVariables`, `%u` and `%c` are the variables and `${` is literal text;
    /// without, `${client.…}` are and `%` is literal.
    static func parse(_ text: String, mosquittoVariables: Bool) throws(TemplateError) -> [TemplateLevel] {
        func fail(_ reason: String) -> TemplateError { TemplateError(template: text, reason: reason) }
        if text.isEmpty { throw fail("empty") }
        if text.unicodeScalars.contains("\0") { throw fail("holds NUL") }
        let rawLevels = text.split(separator: "/", omittingEmptySubsequences: false)
        var levels: [TemplateLevel] = []
        for (index, raw) in rawLevels.enumerated() {
            if raw == "#" {
                guard index == rawLevels.count - 1 else { throw fail("'#' must be the last level") }
                levels.append(.multi)
                continue
            }
            if raw == "+" {
                levels.append(.single)
                continue
            }
            var parts: [TemplatePart] = []
            var literal = ""
            var rest = raw[...]
            func flush() {
                if !literal.isEmpty { parts.append(.literal(literal)) }
                literal = ""
            }
            while let c = rest.first {
                if c == "+" || c == "#" { throw fail("'\(c)' must be a whole level (level \(index + 1))") }
                if mosquittoVariables, c == "%", let next = rest.dropFirst().first, next == "u" || next == "c" {
                    flush()
                    parts.append(next == "u" ? .authenticationName : .sessionName)
                    rest = rest.dropFirst(2)
                    continue
                }
                if !mosquittoVariables, rest.hasPrefix("${") {
                    guard let close = rest.firstIndex(of: "}") else { throw fail("unterminated '${' (level \(index + 1))") }
                    let name = rest[rest.index(rest.startIndex, offsetBy: 2)..<close]
                    flush()
                    if name == "client.authenticationName" {
                        parts.append(.authenticationName)
                    } else if name.hasPrefix("client.attributes."), name.count > "client.attributes.".count {
                        let key = name.dropFirst("client.attributes.".count)
                        // The characters a query's `attributes.KEY` accepts, so both name the same keys.
                        if !key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" || $0 == "-" }) {
                            throw fail("bad attribute name '\(key)' (letters, digits, '.', '_', '-')")
                        }
                        parts.append(.attribute(String(key)))
                    } else {
                        throw fail("unknown variable '${\(name)}' (expected ${client.authenticationName} or ${client.attributes.KEY})")
                    }
                    rest = rest[rest.index(after: close)...]
                    continue
                }
                literal.append(c)
                rest = rest.dropFirst()
            }
            flush()
            levels.append(.parts(parts))
        }
        return levels
    }
}
