/// What one client may do, computed once per CONNECT by ``AuthorizationPolicy/permissions(for:)``
/// or ``MosquittoACL/permissions(for:)``, then asked per PUBLISH and per SUBSCRIBE filter.
///
/// The templates are substituted and split into levels already, so ``mayPublish(_:)`` walks the
/// topic's bytes against each grant without splitting it or allocating.
public struct ClientPermissions: Sendable, Equatable {
    /// `open` mode: everything is allowed.
    public let isOpen: Bool
    /// The client groups the client belongs to (`$all` included); empty for a Mosquitto ACL.
    public let clientGroups: [String]
    let publishGrants: [Grant]
    let subscribeGrants: [Grant]
    /// Mosquitto `deny` lines; a matching one wins over every grant.
    let publishDenials: [Grant]
    let subscribeDenials: [Grant]

    init(isOpen: Bool, clientGroups: [String], publishGrants: [Grant], subscribeGrants: [Grant],
         publishDenials: [Grant] = [], subscribeDenials: [Grant] = []) {
        self.isOpen = isOpen
        self.clientGroups = clientGroups
        self.publishGrants = publishGrants
        self.subscribeGrants = subscribeGrants
        self.publishDenials = publishDenials
        self.subscribeDenials = subscribeDenials
    }

    /// Everything allowed (`authorization: open`).
    public static let open = ClientPermissions(isOpen: true, clientGroups: [], publishGrants: [], subscribeGrants: [])

    /// Whether the client may PUBLISH to the topic name `topic`: a grant matches it and no
    /// denial does. A topic holding a wildcard or NUL, or empty, is denied as invalid.
    public func mayPublish(_ topic: String) -> AuthorizationDecision {
        if isOpen { return AuthorizationDecision(isAllowed: true, reason: .openMode) }
        guard TopicFilter.isValidTopicName(topic) else { return AuthorizationDecision(isAllowed: false, reason: .invalid) }
        for denial in publishDenials where TopicFilter.matches(denial.levels, topic: topic) {
            return AuthorizationDecision(isAllowed: false, reason: .deniedBy(denial))
        }
        for grant in publishGrants where TopicFilter.matches(grant.levels, topic: topic) {
            return AuthorizationDecision(isAllowed: true, reason: .grantedBy(grant))
        }
        return AuthorizationDecision(isAllowed: false, reason: .noGrant)
    }

    /// Whether the client may SUBSCRIBE to `filter`: a grant covers it (every topic the filter
    /// matches, the grant matches) and no denial overlaps it (no topic is matched by both, as
    /// Custody checks the filter once, not every delivered message). A shared subscription
    /// `$share/NAME/F` is checked on F; a malformed filter is denied as invalid.
    public func maySubscribe(_ filter: String) -> AuthorizationDecision {
        if isOpen { return AuthorizationDecision(isAllowed: true, reason: .openMode) }
        guard let inner = TopicFilter.unshared(filter), let levels = TopicFilter.levels(of: inner) else {
            return AuthorizationDecision(isAllowed: false, reason: .invalid)
        }
        for denial in subscribeDenials where TopicFilter.overlaps(denial.levels, levels) {
            return AuthorizationDecision(isAllowed: false, reason: .deniedBy(denial))
        }
        for grant in subscribeGrants where TopicFilter.covers(grant.levels, levels) {
            return AuthorizationDecision(isAllowed: true, reason: .grantedBy(grant))
        }
        return AuthorizationDecision(isAllowed: false, reason: .noGrant)
    }

    /// Every grant and denial that applies to the client, for `--check-config --client`.
    public var publishRules: (grants: [Grant], denials: [Grant]) { (publishGrants, publishDenials) }
    public var subscribeRules: (grants: [Grant], denials: [Grant]) { (subscribeGrants, subscribeDenials) }
}

/// The answer to one check, with what decided it (for logs and `--check-config --client`).
public struct AuthorizationDecision: Sendable, Equatable {
    public let isAllowed: Bool
    public let reason: Reason

    public enum Reason: Sendable, Equatable {
        /// `authorization: open`.
        case openMode
        /// The first grant that matched (publish) or covered (subscribe).
        case grantedBy(Grant)
        /// A Mosquitto `deny` line that matched (publish) or overlapped (subscribe).
        case deniedBy(Grant)
        /// No grant matched or covered.
        case noGrant
        /// Not a valid topic name (publish) or filter (subscribe).
        case invalid
    }
}

/// One substituted template a client holds, and where it came from.
public struct Grant: Sendable, Equatable, CustomStringConvertible {
    public enum Source: Sendable, Equatable {
        /// A permission binding of an ``AuthorizationPolicy``.
        case binding(name: String, clientGroup: String, topicSpace: String)
        /// A line of a Mosquitto ACL file (1-based).
        case aclLine(Int)
    }

    public let source: Source
    /// The template as written (`areas/${client.attributes.area}/#`, `sensor/%u/data`).
    public let template: String
    /// The template substituted for this client (`areas/area1/#`).
    public let filter: String
    let levels: [FilterLevel]

    init(source: Source, template: String, levels: [FilterLevel]) {
        self.source = source
        self.template = template
        self.levels = levels
        self.filter = levels.map { level -> String in
            switch level {
            case .single: "+"
            case .multi: "#"
            case .literal(let bytes): String(decoding: bytes, as: UTF8.self)
            }
        }.joined(separator: "/")
    }

    public var description: String {
        switch source {
        case .binding(let name, let group, let space):
            "binding '\(name)' (group '\(group)', topic space '\(space)', template '\(template)' as '\(filter)')"
        case .aclLine(let line):
            "ACL line \(line) ('\(template)' as '\(filter)')"
        }
    }
}
