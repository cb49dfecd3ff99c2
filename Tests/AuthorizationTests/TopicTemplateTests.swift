import Testing

@testable import Authorization

@Suite("Topic templates")
struct TopicTemplateTests {
    func facts(_ name: String, session: String = "s", _ attributes: [String: AttributeValue] = [:]) -> ClientFacts {
        ClientFacts(authenticationName: name, sessionName: session, attributes: attributes)
    }

    /// The template substituted for `facts`, as a filter string; nil when it matches nothing.
    func substituted(_ template: String, _ facts: ClientFacts) throws -> String? {
        try TopicTemplate(template).substituted(for: facts).map {
            Grant(source: .aclLine(0), template: template, levels: $0).filter
        }
    }

    @Test func substitutesWholeAndPartialLevels() throws {
        let client = facts("Device-1", ["area": .string("area1"), "floor": .int(5)])
        #expect(try substituted("areas/${client.attributes.area}/machines/${client.authenticationName}/#", client)
            == "areas/area1/machines/Device-1/#")
        #expect(try substituted("floor-${client.attributes.floor}/x${client.authenticationName}y/+", client)
            == "floor-5/xDevice-1y/+")
        #expect(try substituted("${client.attributes.area}${client.attributes.floor}", client) == "area15")
        #expect(try substituted("plain/topic", client) == "plain/topic")
        #expect(try TopicTemplate("plain/+/#").isConstant)
        #expect(try !TopicTemplate("a/${client.authenticationName}").isConstant)
    }

    @Test func aMissingOrArrayAttributeMatchesNothing() throws {
        let client = facts("c", ["tags": .strings(["a"])])
        #expect(try substituted("x/${client.attributes.area}", client) == nil)
        #expect(try substituted("x/${client.attributes.tags}", client) == nil)
    }

    @Test(arguments: ["a/+", "#", "+", "a/b", "", "$SYS", "x\0y"])
    func injectionGuard(name: String) throws {
        // Every such name voids the template instead of widening it.
        #expect(try substituted("devices/${client.authenticationName}/#", facts(name)) == nil)
        #expect(try substituted("devices/${client.attributes.id}", facts("c", ["id": .string(name)])) == nil)
    }

    @Test func dollarIsOnlyRefusedAtTheStartOfALevel() throws {
        #expect(try substituted("d/x${client.authenticationName}", facts("$a")) == "d/x$a")
        #expect(try substituted("d/${client.authenticationName}", facts("a$")) == "d/a$")
        #expect(try substituted("${client.authenticationName}/d", facts("$SYS")) == nil)
    }

    @Test func anInjectedNameGetsNoPermission() throws {
        let policy = try AuthorizationPolicy(
            clientGroups: [],
            topicSpaces: [TopicSpace(name: "own", topicTemplates: ["devices/${client.authenticationName}/#"])],
            permissionBindings: [
                PermissionBinding(name: "pub", clientGroupName: "$all", topicSpaceName: "own", permission: .publisher),
                PermissionBinding(name: "sub", clientGroupName: "$all", topicSpaceName: "own", permission: .subscriber),
            ])
        let attacker = policy.permissions(for: facts("#"))
        #expect(!attacker.mayPublish("devices/victim/data").isAllowed)
        #expect(!attacker.maySubscribe("devices/#").isAllowed)
        let wildcard = policy.permissions(for: facts("a/+"))
        #expect(!wildcard.mayPublish("devices/a/b/c").isAllowed)
        #expect(!wildcard.maySubscribe("devices/a/+/#").isAllowed)
        let honest = policy.permissions(for: facts("dev1"))
        #expect(honest.mayPublish("devices/dev1/data").isAllowed)
        #expect(!honest.mayPublish("devices/dev2/data").isAllowed)
    }

    @Test(arguments: [
        ("a/#/b", "'#' must be the last level"),
        ("a/b#", "'#' must be a whole level (level 2)"),
        ("a+/b", "'+' must be a whole level (level 1)"),
        ("a/${client.authenticationName", "unterminated '${' (level 2)"),
        ("a/${client.name}", "unknown variable '${client.name}' (expected ${client.authenticationName} or ${client.attributes.KEY})"),
        ("a/${client.attributes.}", "unknown variable '${client.attributes.}' (expected ${client.authenticationName} or ${client.attributes.KEY})"),
        ("${client.authenticationName/x}", "unterminated '${' (level 1)"),
        ("a/${client.attributes.a b}", "bad attribute name 'a b' (letters, digits, '.', '_', '-')"),
        ("", "empty"),
    ])
    func badTemplatesAreRefused(template: String, reason: String) {
        #expect(throws: TemplateError(template: template, reason: reason)) { try TopicTemplate(template) }
    }

    @Test func aDollarWithoutBraceIsLiteral() throws {
        #expect(try substituted("$SYS/broker/$x", facts("c")) == "$SYS/broker/$x")
    }
}
