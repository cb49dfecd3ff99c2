import ArgumentParser
import Authorization
import CustodyConfig
import Foundation

// Authorization for `custody` (DESIGN.md §5): the access rules of the configuration, the
// start-up line, and `--check-config FILE --client NAME [--publish TOPIC | --subscribe FILTER]`,
// which explains one decision without a client.

struct AccessOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Mosquitto acl_file (topic/user/pattern lines) deciding what clients may publish and subscribe to; not together with permissionBindings (config key aclFile).",
        valueName: "file"))
    var aclFile: String?

    @Option(help: ArgumentHelp(
        "With --check-config: explain what this authentication name may do (with --publish or --subscribe: allow or deny, exit 0 or 1).",
        valueName: "name"))
    var client: String?

    @Option(help: ArgumentHelp("With --client: the session name (ClientID) for %c in acl patterns (default: the client's name).", valueName: "name"))
    var session: String?

    @Option(help: ArgumentHelp("With --client: may it PUBLISH to this topic?", valueName: "topic"))
    var publish: String?

    @Option(help: ArgumentHelp("With --client: may it SUBSCRIBE to this filter?", valueName: "filter"))
    var subscribe: String?

    func validate(checkConfig: String?) throws {
        if client == nil, session != nil || publish != nil || subscribe != nil {
            throw ValidationError("--session, --publish and --subscribe go with --client")
        }
        if client != nil, checkConfig == nil { throw ValidationError("--client goes with --check-config FILE") }
        if publish != nil, subscribe != nil { throw ValidationError("--publish or --subscribe, not both") }
    }
}

extension CustodyConfiguration {
    /// The access rules in force: the acl file is read now, so a bad one stops start-up
    /// (and is refused by a reload) with its line.
    func accessRules() throws -> AccessRules {
        try AccessRules(configuration: self)
    }

    /// What start-up says about authorization; open mode says so loudly.
    func accessLines(_ rules: AccessRules) -> [String] {
        let authorization = self.authorization
        guard rules.mode == .enforced else {
            return ["custody: authorization: open (every client may publish and subscribe anywhere)"]
        }
        var lines: [String]
        if let acl = authorization.aclFile {
            lines = ["custody: authorization: enforced by the acl file \(acl); SIGHUP reloads it"]
        } else {
            lines = ["custody: authorization: enforced client_groups=\(authorization.clientGroups.count + 1) topic_spaces=\(authorization.topicSpaces.count) permission_bindings=\(authorization.permissionBindings.count); SIGHUP reloads them"]
        }
        lines += rules.warnings.map { "custody: warning: \($0)" }
        return lines
    }
}

/// `--check-config FILE --client NAME`: the client's groups and grants, or the decision on one
/// topic or filter with what decided it. True: allowed (or nothing asked).
func explainAccess(_ configuration: CustodyConfiguration, options: AccessOptions) throws -> Bool {
    guard let client = options.client else { return true }
    let rules = try configuration.accessRules()
    let session = options.session ?? client
    let permissions = rules.permissions(authenticationName: client, sessionName: session)
    var lines = ["client: \(client) (session \(session))"]
    if rules.mode == .open {
        lines.append("authorization: open (every client may publish and subscribe anywhere)")
    } else if configuration.authorization.aclFile == nil {
        lines.append("client groups: \(permissions.clientGroups.joined(separator: ", "))")
    }
    let explanation: AuthorizationExplanation
    let subject: String
    if let topic = options.publish {
        explanation = permissions.explainPublish(topic)
        subject = "publish \(topic)"
    } else if let filter = options.subscribe {
        explanation = permissions.explainSubscribe(filter)
        subject = "subscribe \(filter)"
    } else {
        for grant in permissions.publishGrants { lines.append("publish: \(grant)") }
        for grant in permissions.subscribeGrants { lines.append("subscribe: \(grant)") }
        for denial in permissions.publishDenials + permissions.subscribeDenials { lines.append("deny: \(denial)") }
        say(lines.joined(separator: "\n"))
        return true
    }
    let allowed = explanation.decision.isAllowed
    lines.insert("\(allowed ? "allow" : "deny"): \(subject): \(explanation.decision.reason)", at: 0)
    for grant in explanation.matchingGrants { lines.append("grant: \(grant)") }
    for denial in explanation.matchingDenials { lines.append("deny: \(denial)") }
    say(lines.joined(separator: "\n"))
    return allowed
}
