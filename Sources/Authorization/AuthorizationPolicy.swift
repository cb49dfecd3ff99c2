/// `open`: every client may publish and subscribe everywhere (the development default);
/// `enforced`: only what the permission bindings grant.
public enum AuthorizationMode: String, Sendable, Equatable, CaseIterable {
    case open
    case enforced
}

/// Clients selected by a query over their facts (Event Grid's client group).
public struct ClientGroup: Sendable, Equatable {
    /// The group every client belongs to; it always exists and cannot be redefined.
    public static let allName = "$all"

    public var name: String
    public var query: String

    public init(name: String, query: String) {
        self.name = name
        self.query = query
    }
}

/// Up to ``maximumTemplates`` topic templates (DESIGN §5).
public struct TopicSpace: Sendable, Equatable {
    public static let maximumTemplates = 10

    public var name: String
    public var topicTemplates: [String]

    public init(name: String, topicTemplates: [String]) {
        self.name = name
        self.topicTemplates = topicTemplates
    }
}

public enum Permission: String, Sendable, Equatable, CaseIterable {
    case publisher = "Publisher"
    case subscriber = "Subscriber"
}

/// Grants one client group one permission on one topic space.
public struct PermissionBinding: Sendable, Equatable {
    public var name: String
    public var clientGroupName: String
    public var topicSpaceName: String
    public var permission: Permission

    public init(name: String, clientGroupName: String, topicSpaceName: String, permission: Permission) {
        self.name = name
        self.clientGroupName = clientGroupName
        self.topicSpaceName = topicSpaceName
        self.permission = permission
    }
}

/// Why a policy was refused; every case names the item at fault.
public enum PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    case duplicateClientGroup(String)
    /// `$all` exists already and holds everyone.
    case reservedClientGroup(String)
    case badQuery(clientGroup: String, QueryError)
    case duplicateTopicSpace(String)
    case emptyTopicSpace(String)
    case tooManyTemplates(topicSpace: String, count: Int)
    case badTemplate(topicSpace: String, TemplateError)
    case duplicateBinding(String)
    case unknownClientGroup(binding: String, clientGroup: String)
    case unknownTopicSpace(binding: String, topicSpace: String)

    public var description: String {
        switch self {
        case .duplicateClientGroup(let name): "client group '\(name)' is defined twice"
        case .reservedClientGroup(let name): "client group '\(name)' is built in and holds every client"
        case .badQuery(let group, let error): "client group '\(group)': query: \(error)"
        case .duplicateTopicSpace(let name): "topic space '\(name)' is defined twice"
        case .emptyTopicSpace(let name): "topic space '\(name)' has no topic template"
        case .tooManyTemplates(let space, let count):
            "topic space '\(space)' has \(count) topic templates, at most \(TopicSpace.maximumTemplates) are allowed"
        case .badTemplate(let space, let error): "topic space '\(space)': \(error)"
        case .duplicateBinding(let name): "permission binding '\(name)' is defined twice"
        case .unknownClientGroup(let binding, let group): "permission binding '\(binding)': no client group '\(group)'"
        case .unknownTopicSpace(let binding, let space): "permission binding '\(binding)': no topic space '\(space)'"
        }
    }
}

/// Client groups, topic spaces and permission bindings, validated and compiled once (at start-up
/// and on reload); ``permissions(for:)`` then runs once per CONNECT.
///
/// Names are compared exactly (case-sensitive), as YAML keys are.
public struct AuthorizationPolicy: Sendable {
    public let mode: AuthorizationMode
    let groups: [(name: String, query: ClientGroupQuery?)]
    let bindings: [CompiledBinding]

    struct CompiledBinding: Sendable {
        let binding: PermissionBinding
        let groupIndex: Int
        let templates: [TopicTemplate]
    }

    /// Everything allowed, nothing configured.
    public static let open = AuthorizationPolicy(mode: .open, groups: [], bindings: [])

    private init(mode: AuthorizationMode, groups: [(name: String, query: ClientGroupQuery?)], bindings: [CompiledBinding]) {
        self.mode = mode
        self.groups = groups
        self.bindings = bindings
    }

    /// Validates and compiles; the first fault found is thrown. Items are checked in order:
    /// client groups, topic spaces, then bindings.
    public init(
        mode: AuthorizationMode = .enforced, clientGroups: [ClientGroup], topicSpaces: [TopicSpace],
        permissionBindings: [PermissionBinding]
    ) throws(PolicyError) {
        var groups: [(name: String, query: ClientGroupQuery?)] = [(ClientGroup.allName, nil)]
        var groupIndex: [String: Int] = [ClientGroup.allName: 0]
        for group in clientGroups {
            if group.name == ClientGroup.allName { throw .reservedClientGroup(group.name) }
            if groupIndex[group.name] != nil { throw .duplicateClientGroup(group.name) }
            let query: ClientGroupQuery
            do { query = try ClientGroupQuery(parsing: group.query) } catch { throw .badQuery(clientGroup: group.name, error) }
            groupIndex[group.name] = groups.count
            groups.append((group.name, query))
        }
        var spaces: [String: [TopicTemplate]] = [:]
        for space in topicSpaces {
            if spaces[space.name] != nil { throw .duplicateTopicSpace(space.name) }
            if space.topicTemplates.isEmpty { throw .emptyTopicSpace(space.name) }
            if space.topicTemplates.count > TopicSpace.maximumTemplates {
                throw .tooManyTemplates(topicSpace: space.name, count: space.topicTemplates.count)
            }
            var templates: [TopicTemplate] = []
            for text in space.topicTemplates {
                do { templates.append(try TopicTemplate(text)) } catch { throw .badTemplate(topicSpace: space.name, error) }
            }
            spaces[space.name] = templates
        }
        var seenBindings: Set<String> = []
        var bindings: [CompiledBinding] = []
        for binding in permissionBindings {
            if !seenBindings.insert(binding.name).inserted { throw .duplicateBinding(binding.name) }
            guard let index = groupIndex[binding.clientGroupName] else {
                throw .unknownClientGroup(binding: binding.name, clientGroup: binding.clientGroupName)
            }
            guard let templates = spaces[binding.topicSpaceName] else {
                throw .unknownTopicSpace(binding: binding.name, topicSpace: binding.topicSpaceName)
            }
            bindings.append(CompiledBinding(binding: binding, groupIndex: index, templates: templates))
        }
        self.init(mode: mode, groups: groups, bindings: bindings)
    }

    /// The client's groups and its substituted templates per permission. Templates that match
    /// nothing for this client (missing attribute, injection guard) are left out.
    public func permissions(for facts: ClientFacts) -> ClientPermissions {
        if mode == .open { return .open }
        let member = groups.map { $0.query?.matches(facts) ?? true }
        var publish: [Grant] = []
        var subscribe: [Grant] = []
        for compiled in bindings where member[compiled.groupIndex] {
            let binding = compiled.binding
            let source = Grant.Source.binding(
                name: binding.name, clientGroup: binding.clientGroupName, topicSpace: binding.topicSpaceName)
            for template in compiled.templates {
                guard let levels = template.substituted(for: facts) else { continue }
                let grant = Grant(source: source, template: template.text, levels: levels)
                switch binding.permission {
                case .publisher: publish.append(grant)
                case .subscriber: subscribe.append(grant)
                }
            }
        }
        let names = zip(groups, member).filter { $0.1 }.map { $0.0.name }
        return ClientPermissions(isOpen: false, clientGroups: names, publishGrants: publish, subscribeGrants: subscribe)
    }
}
