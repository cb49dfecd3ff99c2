import Authorization
import Yams

// The authorization keys of the configuration file (DESIGN.md §5): `authorization`,
// `clientGroups`, `topicSpaces`, `permissionBindings`, `aclFile`. Every query and template is
// compiled here, so a mistake stops start-up (or is refused by a reload) naming the file,
// the line, the item and, for a query, the column.

extension ConfigurationReader {
    static let authorizationKeys = ["authorization", "clientGroups", "topicSpaces", "permissionBindings", "aclFile"]

    func authorization(_ keys: [String: (key: Node, value: Node)]) throws(ConfigurationError) -> AuthorizationConfiguration {
        var result = AuthorizationConfiguration()
        if let (_, value) = keys["authorization"] {
            result.mode = try choice(value, "authorization", AuthorizationMode.self)
        }
        var groupNodes: [String: Node] = [:]
        if let (_, value) = keys["clientGroups"] {
            for (index, item) in try sequence(value, "clientGroups").enumerated() {
                let at = "clientGroups[\(index)]"
                let fields = try mapping(item, at, known: ["name", "query", "description"])
                let name = try required(fields, "name", item, at)
                guard let (_, queryNode) = fields["query"] else { throw fail(item, "\(at).query", "missing") }
                let query = try nonEmptyString(queryNode, "\(at).query")
                do {
                    _ = try ClientGroupQuery(parsing: query)
                } catch {
                    throw fail(queryNode, "\(at).query",
                               "client group '\(name)': column \(error.column): expected \(error.expected), found \(error.found)")
                }
                if name == ClientGroup.allName {
                    throw fail(fields["name"]?.value, "\(at).name", "'$all' is built in and holds every client")
                }
                guard groupNodes[name] == nil else { throw fail(fields["name"]?.value, "\(at).name", "'\(name)' is defined twice") }
                groupNodes[name] = item
                result.clientGroups.append(ClientGroup(name: name, query: query))
            }
        }
        var spaceNodes: [String: Node] = [:]
        if let (_, value) = keys["topicSpaces"] {
            for (index, item) in try sequence(value, "topicSpaces").enumerated() {
                let at = "topicSpaces[\(index)]"
                let fields = try mapping(item, at, known: ["name", "topicTemplates", "description"])
                let name = try required(fields, "name", item, at)
                guard let (_, templatesNode) = fields["topicTemplates"] else {
                    throw fail(item, "\(at).topicTemplates", "missing (a list of topic templates)")
                }
                var templates: [String] = []
                for (position, node) in try sequence(templatesNode, "\(at).topicTemplates").enumerated() {
                    let path = "\(at).topicTemplates[\(position)]"
                    let text = try nonEmptyString(node, path)
                    do {
                        _ = try TopicTemplate(text)
                    } catch {
                        throw fail(node, path, "topic space '\(name)': \(error.reason)")
                    }
                    templates.append(text)
                }
                guard !templates.isEmpty else { throw fail(templatesNode, "\(at).topicTemplates", "at least one topic template") }
                guard templates.count <= TopicSpace.maximumTemplates else {
                    throw fail(templatesNode, "\(at).topicTemplates",
                               "\(templates.count) templates; a topic space holds at most \(TopicSpace.maximumTemplates)")
                }
                guard spaceNodes[name] == nil else { throw fail(fields["name"]?.value, "\(at).name", "'\(name)' is defined twice") }
                spaceNodes[name] = item
                result.topicSpaces.append(TopicSpace(name: name, topicTemplates: templates))
            }
        }
        if let (_, value) = keys["permissionBindings"] {
            var seen: Set<String> = []
            for (index, item) in try sequence(value, "permissionBindings").enumerated() {
                let at = "permissionBindings[\(index)]"
                let fields = try mapping(item, at, known: [
                    "name", "clientGroupName", "topicSpaceName", "permission", "description",
                ])
                let name = try required(fields, "name", item, at)
                let group = try required(fields, "clientGroupName", item, at)
                let space = try required(fields, "topicSpaceName", item, at)
                guard let (_, permissionNode) = fields["permission"] else {
                    throw fail(item, "\(at).permission", "missing (Publisher or Subscriber)")
                }
                let permission = try choice(permissionNode, "\(at).permission", Permission.self)
                guard group == ClientGroup.allName || groupNodes[group] != nil else {
                    throw fail(fields["clientGroupName"]?.value, "\(at).clientGroupName", "no client group '\(group)'")
                }
                guard spaceNodes[space] != nil else {
                    throw fail(fields["topicSpaceName"]?.value, "\(at).topicSpaceName", "no topic space '\(space)'")
                }
                guard seen.insert(name).inserted else { throw fail(fields["name"]?.value, "\(at).name", "'\(name)' is defined twice") }
                result.permissionBindings.append(
                    PermissionBinding(name: name, clientGroupName: group, topicSpaceName: space, permission: permission))
            }
        }
        if let (key, value) = keys["aclFile"] {
            guard result.permissionBindings.isEmpty else {
                throw fail(key, "aclFile", "not together with permissionBindings: use one or the other")
            }
            result.aclFile = try path(value, "aclFile")
        }
        return result
    }

    private func required(_ fields: [String: (key: Node, value: Node)], _ key: String, _ item: Node, _ at: String)
        throws(ConfigurationError) -> String
    {
        guard let (_, value) = fields[key] else { throw fail(item, "\(at).\(key)", "missing") }
        return try nonEmptyString(value, "\(at).\(key)")
    }
}
