import Authorization

/// What clients may publish and subscribe to (DESIGN.md §5; README "Authorization"):
/// Event Grid's client groups, topic spaces and permission bindings, or a Mosquitto acl_file.
public struct AuthorizationConfiguration: Sendable, Equatable {
    /// `authorization: enforced | open`; nil: enforced when there are permission bindings
    /// or an acl file, open otherwise.
    public var mode: AuthorizationMode?
    public var clientGroups: [ClientGroup] = []
    public var topicSpaces: [TopicSpace] = []
    public var permissionBindings: [PermissionBinding] = []
    /// A Mosquitto acl_file (absolute path once loaded); not together with permission bindings.
    public var aclFile: String?

    public init() {}

    public var effectiveMode: AuthorizationMode {
        mode ?? (permissionBindings.isEmpty && aclFile == nil ? .open : .enforced)
    }
}

extension ClientRecord.Attribute {
    /// As the query language sees it: a boolean is the string `true` or `false`, as Event
    /// Grid's attribute filters compare it.
    var value: AttributeValue {
        switch self {
        case .string(let text): .string(text)
        case .int(let number): .int(number)
        case .bool(let flag): .bool(flag)
        case .strings(let texts): .strings(texts)
        }
    }
}
