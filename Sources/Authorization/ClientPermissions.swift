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
    /// The substituted Publisher templates (or ACL write lines), in the order they are tried.
    public let publishGrants: [Grant]
    /// The substituted Subscriber templates (or ACL read lines), in the order they are tried.
    public let subscribeGrants: [Grant]
    /// Mosquitto `deny` lines; a matching one wins over every grant. Empty for a policy.
    public let publishDenials: [Grant]
    public let subscribeDenials: [Grant]

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
        // Indices, not `for grant in grants`: in a debug build the element loop allocated
        // twice per check (measured with a malloc counter); this one allocates nothing.
        for index in publishDenials.indices where TopicFilter.matches(publishDenials[index].levels, topic: topic) {
            return AuthorizationDecision(isAllowed: false, reason: .deniedBy(publishDenials[index]))
        }
        for index in publishGrants.indices where TopicFilter.matches(publishGrants[index].levels, topic: topic) {
            return AuthorizationDecision(isAllowed: true, reason: .grantedBy(publishGrants[index]))
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

    /// The decision on `topic` and EVERY grant and denial that matches it, for
    /// `--check-config --client NAME --publish TOPIC`; ``mayPublish(_:)`` stops at the first.
    public func explainPublish(_ topic: String) -> AuthorizationExplanation {
        let decision = mayPublish(topic)
        guard !isOpen, TopicFilter.isValidTopicName(topic) else {
            return AuthorizationExplanation(decision: decision, clientGroups: clientGroups, matchingGrants: [], matchingDenials: [])
        }
        return AuthorizationExplanation(
            decision: decision, clientGroups: clientGroups,
            matchingGrants: publishGrants.filter { TopicFilter.matches($0.levels, topic: topic) },
            matchingDenials: publishDenials.filter { TopicFilter.matches($0.levels, topic: topic) })
    }

    /// The decision on `filter` with every grant that covers it and every denial that overlaps it.
    public func explainSubscribe(_ filter: String) -> AuthorizationExplanation {
        let decision = maySubscribe(filter)
        guard !isOpen, let inner = TopicFilter.unshared(filter), let levels = TopicFilter.levels(of: inner) else {
            return AuthorizationExplanation(decision: decision, clientGroups: clientGroups, matchingGrants: [], matchingDenials: [])
        }
        return AuthorizationExplanation(
            decision: decision, clientGroups: clientGroups,
            matchingGrants: subscribeGrants.filter { TopicFilter.covers($0.levels, levels) },
            matchingDenials: subscribeDenials.filter { TopicFilter.overlaps($0.levels, levels) })
    }
}

/// A decision with all that bears on it (the slow path, for operators).
public struct AuthorizationExplanation: Sendable, Equatable {
    public let decision: AuthorizationDecision
    /// The client's groups (`$all` first); empty for a Mosquitto ACL or in open mode.
    public let clientGroups: [String]
    /// Every grant that matches the topic (publish) or covers the filter (subscribe).
    public let matchingGrants: [Grant]
    /// Every denial that matches the topic (publish) or overlaps the filter (subscribe).
    public let matchingDenials: [Grant]
}

/// The answer to one check, with what decided it (for logs and `--check-config --client`).
public struct AuthorizationDecision: Sendable, Equatable {
    public let isAllowed: Bool
    public let reason: Reason

    public enum Reason: Sendable, Equatable, CustomStringConvertible {
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

        public var description: String {
            switch self {
            case .openMode: "authorization is open"
            case .grantedBy(let grant): "granted by \(grant)"
            case .deniedBy(let grant): "denied by \(grant)"
            case .noGrant: "no permission binding grants it"
            case .invalid: "not a valid topic name or filter"
            }
        }
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
