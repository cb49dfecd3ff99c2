import Testing

@testable import Authorization

@Suite("Authorization policy")
struct PolicyTests {
    /// Event Grid's factory example: machines and gateways of an area publish under their own
    /// name; the area's dashboards read everything of the area.
    func factory() throws -> AuthorizationPolicy {
        try AuthorizationPolicy(
            mode: .enforced,
            clientGroups: [
                ClientGroup(name: "area1-machines", query: "attributes.area = 'area1' and attributes.role IN ['machine','gateway']"),
                ClientGroup(name: "area1-dashboards", query: "attributes.area = 'area1' and attributes.role = 'dashboard'"),
                ClientGroup(name: "floor-low", query: "attributes.floor <= 2"),
            ],
            topicSpaces: [
                TopicSpace(name: "area1-machine-telemetry", topicTemplates: ["areas/area1/machines/${client.authenticationName}/#"]),
                TopicSpace(name: "area1-all", topicTemplates: ["areas/area1/#"]),
                TopicSpace(name: "own-commands", topicTemplates: [
                    "commands/${client.attributes.area}/${client.authenticationName}",
                    "commands/${client.attributes.area}/broadcast",
                ]),
                TopicSpace(name: "status", topicTemplates: ["status/+"]),
            ],
            permissionBindings: [
                PermissionBinding(name: "machines-publish", clientGroupName: "area1-machines",
                                  topicSpaceName: "area1-machine-telemetry", permission: .publisher),
                PermissionBinding(name: "machines-commands", clientGroupName: "area1-machines",
                                  topicSpaceName: "own-commands", permission: .subscriber),
                PermissionBinding(name: "dashboards-read", clientGroupName: "area1-dashboards",
                                  topicSpaceName: "area1-all", permission: .subscriber),
                PermissionBinding(name: "everyone-status", clientGroupName: "$all",
                                  topicSpaceName: "status", permission: .publisher),
            ])
    }

    let machine = ClientFacts(authenticationName: "Machine-7", sessionName: "m7",
                              attributes: ["area": .string("area1"), "role": .string("machine"), "floor": .int(1)])
    let dashboard = ClientFacts(authenticationName: "dash", sessionName: "d",
                                attributes: ["area": .string("area1"), "role": .string("dashboard")])
    let stranger = ClientFacts(authenticationName: "x", sessionName: "x", attributes: ["area": .string("area2"), "role": .string("machine")])

    @Test func groupsAreComputedOncePerClient() throws {
        let policy = try factory()
        #expect(policy.permissions(for: machine).clientGroups == ["$all", "area1-machines", "floor-low"])
        #expect(policy.permissions(for: dashboard).clientGroups == ["$all", "area1-dashboards"])
        #expect(policy.permissions(for: stranger).clientGroups == ["$all"])
    }

    @Test func publishMatchesAPublisherTemplate() throws {
        let permissions = try factory().permissions(for: machine)
        let decision = permissions.mayPublish("areas/area1/machines/Machine-7/temperature")
        #expect(decision.isAllowed)
        guard case .grantedBy(let grant) = decision.reason else { Issue.record("no grant"); return }
        #expect(grant.source == .binding(name: "machines-publish", clientGroup: "area1-machines", topicSpace: "area1-machine-telemetry"))
        #expect(grant.template == "areas/area1/machines/${client.authenticationName}/#")
        #expect(grant.filter == "areas/area1/machines/Machine-7/#")
        #expect(permissions.mayPublish("areas/area1/machines/Machine-7").isAllowed)
        #expect(permissions.mayPublish("status/ok").isAllowed)
        #expect(permissions.mayPublish("areas/area1/machines/Machine-8/temperature") == AuthorizationDecision(isAllowed: false, reason: .noGrant))
        #expect(!permissions.mayPublish("areas/area1/machines/machine-7/t").isAllowed, "topics are case-sensitive")
        #expect(!permissions.mayPublish("commands/area1/Machine-7").isAllowed, "subscriber only")
        #expect(permissions.mayPublish("areas/+/x") == AuthorizationDecision(isAllowed: false, reason: .invalid))
        #expect(try !factory().permissions(for: stranger).mayPublish("areas/area1/machines/x/t").isAllowed)
    }

    @Test func subscribeNeedsACoveringSubscriberTemplate() throws {
        let machinePermissions = try factory().permissions(for: machine)
        #expect(machinePermissions.maySubscribe("commands/area1/Machine-7").isAllowed)
        #expect(machinePermissions.maySubscribe("commands/area1/broadcast").isAllowed)
        #expect(!machinePermissions.maySubscribe("commands/area1/+").isAllowed)
        #expect(!machinePermissions.maySubscribe("areas/area1/machines/Machine-7/#").isAllowed, "publisher only")

        let dashboardPermissions = try factory().permissions(for: dashboard)
        #expect(dashboardPermissions.maySubscribe("areas/area1/machines/+/temperature").isAllowed)
        #expect(dashboardPermissions.maySubscribe("areas/area1/#").isAllowed)
        #expect(dashboardPermissions.maySubscribe("$share/dashboards/areas/area1/#").isAllowed)
        #expect(!dashboardPermissions.maySubscribe("areas/#").isAllowed)
        #expect(!dashboardPermissions.maySubscribe("areas/+/machines/#").isAllowed)
        #expect(dashboardPermissions.maySubscribe("$share/g") == AuthorizationDecision(isAllowed: false, reason: .invalid))
        #expect(dashboardPermissions.maySubscribe("areas/area1/#/x") == AuthorizationDecision(isAllowed: false, reason: .invalid))
    }

    @Test func aClientWithoutTheAttributeGetsNothingFromTheTemplate() throws {
        let noArea = ClientFacts(authenticationName: "m", sessionName: "m", attributes: ["role": .string("machine")])
        let policy = try AuthorizationPolicy(
            clientGroups: [],
            topicSpaces: [TopicSpace(name: "area", topicTemplates: ["commands/${client.attributes.area}/#", "all/#"])],
            permissionBindings: [PermissionBinding(name: "b", clientGroupName: "$all", topicSpaceName: "area", permission: .subscriber)])
        let permissions = policy.permissions(for: noArea)
        #expect(permissions.subscribeGrants.map(\.filter) == ["all/#"])
        #expect(!permissions.maySubscribe("commands/+/x").isAllowed)
    }

    @Test func explanationsListEveryGrantThatApplies() throws {
        let policy = try AuthorizationPolicy(
            clientGroups: [ClientGroup(name: "area1", query: "attributes.area = 'area1'")],
            topicSpaces: [
                TopicSpace(name: "wide", topicTemplates: ["areas/#", "areas/${client.attributes.area}/#"]),
                TopicSpace(name: "narrow", topicTemplates: ["areas/area1/+"]),
            ],
            permissionBindings: [
                PermissionBinding(name: "wide-sub", clientGroupName: "$all", topicSpaceName: "wide", permission: .subscriber),
                PermissionBinding(name: "narrow-sub", clientGroupName: "area1", topicSpaceName: "narrow", permission: .subscriber),
                PermissionBinding(name: "narrow-pub", clientGroupName: "area1", topicSpaceName: "narrow", permission: .publisher),
            ])
        let permissions = policy.permissions(for: machine)
        let subscribe = permissions.explainSubscribe("areas/area1/x")
        #expect(subscribe.decision.isAllowed)
        #expect(subscribe.clientGroups == ["$all", "area1"])
        #expect(subscribe.matchingGrants.map(\.filter) == ["areas/#", "areas/area1/#", "areas/area1/+"])
        #expect(subscribe.matchingGrants.map(\.description).last
            == "binding 'narrow-sub' (group 'area1', topic space 'narrow', template 'areas/area1/+' as 'areas/area1/+')")
        let publish = permissions.explainPublish("areas/area1/x")
        #expect(publish.decision.isAllowed && publish.matchingGrants.count == 1 && publish.matchingDenials == [])
        let denied = permissions.explainPublish("areas/area2/x")
        #expect(!denied.decision.isAllowed && denied.matchingGrants == [])
    }

    @Test func openModeAllowsEverything() throws {
        let policy = try AuthorizationPolicy(mode: .open, clientGroups: [], topicSpaces: [], permissionBindings: [])
        let permissions = policy.permissions(for: stranger)
        #expect(permissions == .open)
        #expect(permissions.mayPublish("anything/at/all") == AuthorizationDecision(isAllowed: true, reason: .openMode))
        #expect(permissions.maySubscribe("#").isAllowed && permissions.maySubscribe("$SYS/#").isAllowed)
        #expect(AuthorizationPolicy.open.permissions(for: machine).mayPublish("x").isAllowed)
    }

    @Test func enforcedWithoutBindingsDeniesEverything() throws {
        let permissions = try AuthorizationPolicy(clientGroups: [], topicSpaces: [], permissionBindings: []).permissions(for: machine)
        #expect(!permissions.mayPublish("a").isAllowed && !permissions.maySubscribe("a").isAllowed)
    }

    @Test func dollarTopicsNeedALiteralDollarTemplate() throws {
        let policy = try AuthorizationPolicy(
            clientGroups: [],
            topicSpaces: [TopicSpace(name: "everything", topicTemplates: ["#"]), TopicSpace(name: "sys", topicTemplates: ["$SYS/#"])],
            permissionBindings: [
                PermissionBinding(name: "all", clientGroupName: "$all", topicSpaceName: "everything", permission: .subscriber),
                PermissionBinding(name: "pub", clientGroupName: "$all", topicSpaceName: "everything", permission: .publisher),
            ])
        let permissions = policy.permissions(for: machine)
        #expect(permissions.maySubscribe("a/b/#").isAllowed && permissions.maySubscribe("#").isAllowed)
        #expect(!permissions.maySubscribe("$SYS/#").isAllowed)
        #expect(!permissions.mayPublish("$SYS/x").isAllowed)
    }

    func refusal(
        groups: [ClientGroup] = [], spaces: [TopicSpace] = [TopicSpace(name: "s", topicTemplates: ["a"])],
        bindings: [PermissionBinding] = []
    ) -> PolicyError? {
        do {
            _ = try AuthorizationPolicy(clientGroups: groups, topicSpaces: spaces, permissionBindings: bindings)
            return nil
        } catch {
            return error
        }
    }

    @Test func validationErrorsNameTheItem() {
        let group = ClientGroup(name: "g", query: "attributes.a = 1")
        #expect(refusal(groups: [group, group]) == .duplicateClientGroup("g"))
        #expect(refusal(groups: [ClientGroup(name: "$all", query: "attributes.a = 1")]) == .reservedClientGroup("$all"))
        let bad = refusal(groups: [ClientGroup(name: "bad", query: "attributes.a IN ['x'")])
        #expect(bad == .badQuery(clientGroup: "bad", QueryError(column: 21, expected: "']' or ','", found: "end of query")))
        #expect(bad?.description == "client group 'bad': query: QueryError: column 21: expected ']' or ',', found end of query")
        let space = TopicSpace(name: "s", topicTemplates: ["a"])
        #expect(refusal(spaces: [space, space]) == .duplicateTopicSpace("s"))
        #expect(refusal(spaces: [TopicSpace(name: "e", topicTemplates: [])]) == .emptyTopicSpace("e"))
        let eleven = TopicSpace(name: "big", topicTemplates: (1...11).map { "t/\($0)" })
        #expect(refusal(spaces: [eleven]) == .tooManyTemplates(topicSpace: "big", count: 11))
        #expect(refusal(spaces: [TopicSpace(name: "ten", topicTemplates: (1...10).map { "t/\($0)" })]) == nil)
        let badTemplate = refusal(spaces: [TopicSpace(name: "t", topicTemplates: ["ok", "a/#/b"])])
        #expect(badTemplate == .badTemplate(topicSpace: "t", TemplateError(template: "a/#/b", reason: "'#' must be the last level")))
        #expect(badTemplate?.description == "topic space 't': topic template 'a/#/b': '#' must be the last level")
        let binding = PermissionBinding(name: "b", clientGroupName: "$all", topicSpaceName: "s", permission: .publisher)
        #expect(refusal(bindings: [binding]) == nil)
        #expect(refusal(bindings: [binding, binding]) == .duplicateBinding("b"))
        #expect(refusal(bindings: [PermissionBinding(name: "b", clientGroupName: "nope", topicSpaceName: "s", permission: .publisher)])
            == .unknownClientGroup(binding: "b", clientGroup: "nope"))
        #expect(refusal(bindings: [PermissionBinding(name: "b", clientGroupName: "$all", topicSpaceName: "nope", permission: .subscriber)])
            == .unknownTopicSpace(binding: "b", topicSpace: "nope"))
    }
}
