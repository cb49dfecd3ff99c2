/// Mosquitto's `acl_file`, for brokers moving to Custody; it yields the same
/// ``ClientPermissions`` as an ``AuthorizationPolicy``.
///
/// Lines: `user NAME` starts a section; `topic [read|write|readwrite|deny] TOPIC` (default
/// `readwrite`) applies to the section's user; `pattern [read|write|readwrite|deny] TOPIC`
/// applies to every client wherever it stands, with `%u` (authentication name) and `%c` (session
/// name) substituted under the same injection guard as ``TopicTemplate``; `#` starts a comment
/// line; blank lines are skipped; leading blanks are ignored.
///
/// Rules as Custody applies them:
/// - `topic` lines before the first `user` are, in Mosquitto, for anonymous clients (no
///   username). Custody has no anonymous client — every client has an authentication name
///   (DESIGN §1) — so those lines apply to NO client; they are listed in ``warnings`` so that
///   configuration checks can say so.
/// - `user` names compare case-insensitively, like authentication names; two sections for one
///   user add up.
/// - `deny` wins (Mosquitto 2): PUBLISH is allowed when a `write`/`readwrite` line matches the
///   topic and no `deny` line matches it. SUBSCRIBE to F is allowed when a `read`/`readwrite`
///   line COVERS F and no `deny` line OVERLAPS F (matches some topic F matches): Mosquitto also
///   checks read access on every delivered message, Custody only at SUBSCRIBE, so a filter that
///   could carry a denied topic is refused as a whole.
/// - A `pattern deny` line whose `%u`/`%c` fails the injection guard for a client denies that
///   client everything (a denial must not disappear with an odd name); a grant line that fails
///   it grants nothing.
public struct MosquittoACL: Sendable {
    enum Access: Sendable { case read, write, readwrite, deny }

    struct Entry: Sendable {
        let line: Int
        let access: Access
        let template: TopicTemplate
    }

    /// Per user (lower-cased name), its `topic` lines.
    let userEntries: [String: [Entry]]
    let patternEntries: [Entry]
    /// Remarks that do not refuse the file (e.g. anonymous `topic` lines that apply to no one).
    public let warnings: [String]

    /// Parses the file's text; throws an ``ACLError`` naming the line.
    public init(parsing text: String) throws(ACLError) {
        var users: [String: [Entry]] = [:]
        var patterns: [Entry] = []
        var warnings: [String] = []
        var currentUser: String?
        var lineNumber = 0
        // "\r\n" is one Character in Swift, so splitting on "\n" alone would miss it.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            lineNumber += 1
            var line = Substring(rawLine)
            if line.last == "\r" { line = line.dropLast() }
            line = line.drop { $0 == " " || $0 == "\t" }
            while let last = line.last, last == " " || last == "\t" { line = line.dropLast() }
            if line.isEmpty || line.first == "#" { continue }
            let (keyword, rest) = Self.word(line)
            switch keyword {
            case "user":
                let name = rest.drop { $0 == " " || $0 == "\t" }
                if name.isEmpty { throw ACLError(line: lineNumber, reason: "'user' needs a name") }
                currentUser = String(name).lowercased()
            case "topic", "pattern":
                var access = Access.readwrite
                var topic = rest.drop { $0 == " " || $0 == "\t" }
                let (first, afterFirst) = Self.word(topic)
                let accessWords: [Substring: Access] = ["read": .read, "write": .write, "readwrite": .readwrite, "deny": .deny]
                if let given = accessWords[first], !afterFirst.isEmpty {
                    access = given
                    topic = afterFirst.drop { $0 == " " || $0 == "\t" }
                }
                if topic.isEmpty { throw ACLError(line: lineNumber, reason: "'\(keyword)' needs a topic") }
                let levels: [TemplateLevel]
                do {
                    levels = try TemplateParser.parse(String(topic), mosquittoVariables: keyword == "pattern")
                } catch {
                    throw ACLError(line: lineNumber, reason: error.description)
                }
                let entry = Entry(line: lineNumber, access: access, template: TopicTemplate(text: String(topic), levels: levels))
                if keyword == "pattern" {
                    patterns.append(entry)
                } else if let user = currentUser {
                    users[user, default: []].append(entry)
                } else {
                    warnings.append("line \(lineNumber): 'topic \(topic)' is for anonymous clients, and Custody has none: it applies to no client")
                }
            default:
                throw ACLError(line: lineNumber, reason: "unknown keyword '\(keyword)' (expected 'user', 'topic' or 'pattern')")
            }
        }
        self.userEntries = users
        self.patternEntries = patterns
        self.warnings = warnings
    }

    /// The client's grants and denials: its user's `topic` lines, then every `pattern` line.
    public func permissions(for facts: ClientFacts) -> ClientPermissions {
        var publish: [Grant] = []
        var subscribe: [Grant] = []
        var publishDenials: [Grant] = []
        var subscribeDenials: [Grant] = []
        let entries = (userEntries[facts.authenticationName.lowercased()] ?? []) + patternEntries
        for entry in entries {
            guard let levels = entry.template.substituted(for: facts) else {
                // A deny that cannot be written for this client must not vanish: fail closed.
                if entry.access == .deny { return ClientPermissions(isOpen: false, clientGroups: [], publishGrants: [], subscribeGrants: []) }
                continue
            }
            let grant = Grant(source: .aclLine(entry.line), template: entry.template.text, levels: levels)
            switch entry.access {
            case .read: subscribe.append(grant)
            case .write: publish.append(grant)
            case .readwrite:
                publish.append(grant)
                subscribe.append(grant)
            case .deny:
                publishDenials.append(grant)
                subscribeDenials.append(grant)
            }
        }
        return ClientPermissions(
            isOpen: false, clientGroups: [], publishGrants: publish, subscribeGrants: subscribe,
            publishDenials: publishDenials, subscribeDenials: subscribeDenials)
    }

    private static func word(_ text: Substring) -> (Substring, Substring) {
        let end = text.firstIndex { $0 == " " || $0 == "\t" } ?? text.endIndex
        return (text[..<end], text[end...])
    }
}

/// An ACL file that does not parse.
public struct ACLError: Error, Sendable, Equatable, CustomStringConvertible {
    public let line: Int
    public let reason: String
    public var description: String { "ACL line \(line): \(reason)" }
}
