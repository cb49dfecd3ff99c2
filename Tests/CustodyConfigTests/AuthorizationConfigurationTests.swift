import Authorization
import CustodyModel
import CustodyTesting
import Foundation
import Testing

@testable import CustodyConfig

@Suite("Authorization configuration")
struct AuthorizationConfigurationTests {
    func parse(_ yaml: String) throws(ConfigurationError) -> CustodyConfiguration {
        try CustodyConfiguration.parse(yaml: yaml, file: "custody.yaml", baseDirectory: "/etc/custody")
    }

    func refusal(_ yaml: String) -> ConfigurationError? {
        do {
            _ = try parse(yaml)
            return nil
        } catch {
            return error
        }
    }

    /// The issue's example, line for line (without the acl file, which excludes bindings).
    static let example = """
        authorization: enforced
        clientGroups:
          - { name: area1-machines, query: "attributes.area = 'area1' and attributes.role IN ['machine', 'gateway']" }
        topicSpaces:
          - name: area1-telemetry
            topicTemplates: ["areas/area1/machines/${client.authenticationName}/#", "areas/${client.attributes.area}/status"]
        permissionBindings:
          - { name: a1-pub, clientGroupName: area1-machines, topicSpaceName: area1-telemetry, permission: Publisher }
          - { name: a1-sub, clientGroupName: $all,           topicSpaceName: area1-telemetry, permission: Subscriber }
        """

    @Test func theIssuesExampleReadsAsWritten() throws {
        let authorization = try parse(Self.example).authorization
        #expect(authorization.mode == .enforced)
        #expect(authorization.clientGroups == [ClientGroup(
            name: "area1-machines", query: "attributes.area = 'area1' and attributes.role IN ['machine', 'gateway']")])
        #expect(authorization.topicSpaces == [TopicSpace(name: "area1-telemetry", topicTemplates: [
            "areas/area1/machines/${client.authenticationName}/#", "areas/${client.attributes.area}/status",
        ])])
        #expect(authorization.permissionBindings.map(\.name) == ["a1-pub", "a1-sub"])
        #expect(authorization.permissionBindings[1].clientGroupName == "$all")
        #expect(authorization.permissionBindings[0].permission == .publisher)
    }

    @Test func theModeDefaultsToEnforcedOnlyWithBindings() throws {
        #expect(try parse("").authorization.effectiveMode == .open)
        #expect(try parse(Self.example.replacingOccurrences(of: "authorization: enforced\n", with: ""))
            .authorization.effectiveMode == .enforced)
        #expect(try parse("aclFile: mosquitto.acl").authorization.effectiveMode == .enforced)
        #expect(try parse("aclFile: mosquitto.acl").authorization.aclFile == "/etc/custody/mosquitto.acl")
        #expect(try parse(Self.example.replacingOccurrences(of: "enforced", with: "open")).authorization.effectiveMode == .open)
    }

    /// A query that does not parse names the file, the line, the key, the group and the column.
    @Test func aBrokenQueryNamesItsLineGroupAndColumn() throws {
        let error = try #require(refusal("""
            clientGroups:
              - { name: ok, query: "authenticationName = 'a'" }
              - { name: broken, query: "attributes.area = 'a' and" }
            """))
        #expect(error.line == 3)
        #expect(error.key == "clientGroups[1].query")
        #expect(error.description.hasPrefix("custody.yaml:3: clientGroups[1].query: client group 'broken': column "))
    }

    @Test(arguments: [
        ("topicSpaces:\n  - { name: s, topicTemplates: [\"a/#/b\"] }\n", 2, "topicSpaces[0].topicTemplates[0]"),
        ("topicSpaces:\n  - { name: s, topicTemplates: [\"a/${client.nope}\"] }\n", 2, "topicSpaces[0].topicTemplates[0]"),
        ("topicSpaces:\n  - { name: s, topicTemplates: [] }\n", 2, "topicSpaces[0].topicTemplates"),
        ("topicSpaces:\n  - { name: s, topicTemplates: [a] }\n  - { name: s, topicTemplates: [b] }\n", 3, "topicSpaces[1].name"),
        ("clientGroups:\n  - { name: $all, query: \"authenticationName = 'a'\" }\n", 2, "clientGroups[0].name"),
        ("topicSpaces: [{ name: s, topicTemplates: [a] }]\npermissionBindings:\n  - { name: b, clientGroupName: nobody, topicSpaceName: s, permission: Publisher }\n",
         3, "permissionBindings[0].clientGroupName"),
        ("topicSpaces: [{ name: s, topicTemplates: [a] }]\npermissionBindings:\n  - { name: b, clientGroupName: $all, topicSpaceName: t, permission: Publisher }\n",
         3, "permissionBindings[0].topicSpaceName"),
        ("topicSpaces: [{ name: s, topicTemplates: [a] }]\npermissionBindings:\n  - { name: b, clientGroupName: $all, topicSpaceName: s, permission: Reader }\n",
         3, "permissionBindings[0].permission"),
        ("topicSpaces: [{ name: s, topicTemplates: [a] }]\npermissionBindings:\n  - { name: b, clientGroupName: $all, topicSpaceName: s, permission: Publisher }\naclFile: x.acl\n",
         4, "aclFile"),
        ("authorization: sometimes\n", 1, "authorization"),
    ] as [(String, Int, String)])
    func mistakesAreNamedWithLineAndKey(yaml: String, line: Int, key: String) throws {
        let error = try #require(refusal(yaml), "accepted: \(yaml)")
        #expect(error.line == line, "\(error)")
        #expect(error.key == key, "\(error)")
    }

    /// The registry's attributes feed the queries and templates; a boolean is the string
    /// `true`/`false`; names compare case-insensitively.
    @Test func theRegistrysAttributesDecide() throws {
        let configuration = try parse("""
            clients:
              - { authenticationName: Machine-7, attributes: { area: area1, role: [machine, sensor], floor: 3, active: true } }
            clientGroups:
              - { name: low-machines, query: "attributes.role = 'machine' and attributes.floor <= 5 and attributes.active = 'true'" }
            topicSpaces:
              - { name: area, topicTemplates: ["areas/${client.attributes.area}/${client.authenticationName}/#"] }
            permissionBindings:
              - { name: pub, clientGroupName: low-machines, topicSpaceName: area, permission: Publisher }
            """)
        let rules = try AccessRules(configuration: configuration)
        #expect(rules.mode == .enforced)
        let machine = rules.permissions(authenticationName: "machine-7", sessionName: "s")
        #expect(machine.clientGroups == ["$all", "low-machines"])
        #expect(machine.mayPublish("areas/area1/machine-7/temp").isAllowed)
        #expect(!machine.mayPublish("areas/area2/machine-7/temp").isAllowed)
        let stranger = rules.permissions(authenticationName: "stranger", sessionName: "s")
        #expect(stranger.clientGroups == ["$all"])
        #expect(!stranger.mayPublish("areas/area1/stranger/temp").isAllowed)
        #expect(try AccessRules(configuration: parse("")).mode == .open)
    }

    /// An acl file is read when the rules are made: a bad line stops start-up (or a reload)
    /// with the file and the line.
    @Test func aBadAclFileIsNamedWithItsLine() throws {
        let path = scratchDirectory("acl-bad") + ".acl"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "user alice\ntopic readwrite a/#\ntopics read b\n".write(toFile: path, atomically: true, encoding: .utf8)
        var configuration = CustodyConfiguration()
        configuration.authorization.aclFile = path
        #expect(throws: ConfigurationError.self) { try AccessRules(configuration: configuration) }
        do {
            _ = try AccessRules(configuration: configuration)
        } catch {
            #expect(error.file == path && error.line == 3, "\(error)")
        }
    }
}
