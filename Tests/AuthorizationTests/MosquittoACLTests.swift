import Testing

@testable import Authorization

@Suite("Mosquitto acl_file")
struct MosquittoACLTests {
    /// The example of Mosquitto's documentation (aclfile.example and mosquitto.conf(5)).
    let documented = """
        # This affects access control for clients with no username.
        topic read $SYS/#

        # This only affects clients with username "roger".
        user roger
        topic foo/bar

        # This affects all clients.
        pattern write $SYS/broker/connection/%c/state
        pattern write sensor/%u/data
        """

    func client(_ name: String, session: String = "session-1") -> ClientFacts {
        ClientFacts(authenticationName: name, sessionName: session)
    }

    @Test func theDocumentedExample() throws {
        let acl = try MosquittoACL(parsing: documented)
        #expect(acl.warnings == ["line 2: 'topic $SYS/#' is for anonymous clients, and Custody has none: it applies to no client"])

        let roger = acl.permissions(for: client("Roger", session: "r1"))
        #expect(roger.mayPublish("foo/bar").isAllowed, "user names compare case-insensitively")
        #expect(roger.maySubscribe("foo/bar").isAllowed, "readwrite by default")
        #expect(roger.mayPublish("foo/bar") == AuthorizationDecision(isAllowed: true, reason: .grantedBy(
            Grant(source: .aclLine(6), template: "foo/bar", levels: [.literal(Array("foo".utf8)), .literal(Array("bar".utf8))]))))
        #expect(!roger.maySubscribe("foo/#").isAllowed)
        #expect(roger.mayPublish("$SYS/broker/connection/r1/state").isAllowed)
        #expect(!roger.maySubscribe("$SYS/broker/connection/r1/state").isAllowed, "write only")
        #expect(!roger.mayPublish("$SYS/broker/connection/r2/state").isAllowed)
        #expect(roger.mayPublish("sensor/Roger/data").isAllowed)
        #expect(!roger.maySubscribe("$SYS/#").isAllowed, "the anonymous lines apply to no one")

        let other = acl.permissions(for: client("sam", session: "s9"))
        #expect(!other.mayPublish("foo/bar").isAllowed)
        #expect(other.mayPublish("sensor/sam/data").isAllowed)
        #expect(!other.mayPublish("sensor/roger/data").isAllowed)
        #expect(other.mayPublish("$SYS/broker/connection/s9/state").isAllowed)
    }

    @Test func denyWinsOverGrants() throws {
        let acl = try MosquittoACL(parsing: """
            user alice
            topic readwrite home/#
            topic deny home/secret/#
            pattern read public/#
            pattern deny public/%u/private
            """)
        let alice = acl.permissions(for: client("alice"))
        #expect(alice.mayPublish("home/kitchen").isAllowed)
        let denied = alice.mayPublish("home/secret/key")
        #expect(!denied.isAllowed)
        guard case .deniedBy(let grant) = denied.reason else { Issue.record("not denied by a line"); return }
        #expect(grant.source == .aclLine(3))
        #expect(!alice.maySubscribe("home/secret/+").isAllowed)
        // A filter that could carry a denied topic is refused as a whole.
        #expect(!alice.maySubscribe("home/#").isAllowed)
        #expect(!alice.maySubscribe("home/+/key").isAllowed)
        #expect(alice.maySubscribe("home/kitchen/#").isAllowed)
        let explanation = alice.explainSubscribe("home/#")
        #expect(explanation.matchingGrants.map(\.source) == [.aclLine(2)])
        #expect(explanation.matchingDenials.map(\.source) == [.aclLine(3)])
        #expect(alice.maySubscribe("public/bob/private").isAllowed)
        #expect(!alice.maySubscribe("public/alice/private").isAllowed)
        #expect(!alice.maySubscribe("public/#").isAllowed)
    }

    @Test func readAndWriteAreSeparate() throws {
        let acl = try MosquittoACL(parsing: """
            user u
            topic read in/#
            topic write out/+
            """)
        let u = acl.permissions(for: client("u"))
        #expect(u.maySubscribe("in/a/b").isAllowed && !u.mayPublish("in/a").isAllowed)
        #expect(u.mayPublish("out/a").isAllowed && !u.maySubscribe("out/a").isAllowed)
    }

    @Test func commentsBlanksAndSpaces() throws {
        let acl = try MosquittoACL(parsing: "\r\n   # comment\n\tuser  bob \r\n  topic   read   a b/c  \n\n")
        let bob = acl.permissions(for: client("bob"))
        #expect(bob.maySubscribe("a b/c").isAllowed)
        #expect(!bob.mayPublish("a b/c").isAllowed)
    }

    @Test func sectionsForOneUserAddUp() throws {
        let acl = try MosquittoACL(parsing: "user a\ntopic x\nuser b\ntopic y\nuser A\ntopic z\n")
        let a = acl.permissions(for: client("a"))
        #expect(a.mayPublish("x").isAllowed && a.mayPublish("z").isAllowed && !a.mayPublish("y").isAllowed)
    }

    @Test(arguments: ["#", "a/+", "a/b", "+", "$x"])
    func patternsGuardAgainstInjection(name: String) throws {
        let acl = try MosquittoACL(parsing: "pattern readwrite devices/%u/#\npattern readwrite clients/%c\n")
        let attacker = acl.permissions(for: client(name, session: name))
        #expect(!attacker.mayPublish("devices/victim/x").isAllowed)
        #expect(!attacker.maySubscribe("devices/#").isAllowed)
        #expect(!attacker.maySubscribe("clients/+").isAllowed)
    }

    @Test func aDenyThatCannotBeWrittenDeniesEverything() throws {
        let acl = try MosquittoACL(parsing: "pattern readwrite #\npattern deny private/%u/#\n")
        #expect(acl.permissions(for: client("ok")).mayPublish("public/x").isAllowed)
        let odd = acl.permissions(for: client("a/b"))
        #expect(!odd.mayPublish("public/x").isAllowed && !odd.maySubscribe("public/x").isAllowed)
    }

    @Test func templateSyntaxIsMosquittos() throws {
        // `${…}` is literal text in an ACL file; `%u`/`%c` are literal in a topic line.
        let acl = try MosquittoACL(parsing: "user u\ntopic a/%u\npattern b/${client.authenticationName}\n")
        let u = acl.permissions(for: client("u"))
        #expect(u.mayPublish("a/%u").isAllowed && !u.mayPublish("a/u").isAllowed)
        #expect(u.mayPublish("b/${client.authenticationName}").isAllowed)
    }

    func refusal(_ text: String) -> ACLError? {
        do {
            _ = try MosquittoACL(parsing: text)
            return nil
        } catch {
            return error
        }
    }

    @Test func errorsNameTheLine() {
        #expect(refusal("user\n") == ACLError(line: 1, reason: "'user' needs a name"))
        #expect(refusal("user a\ntopic\n") == ACLError(line: 2, reason: "'topic' needs a topic"))
        #expect(refusal("# c\n\ntopic a/#/b\n") == ACLError(line: 3, reason: "topic template 'a/#/b': '#' must be the last level"))
        #expect(refusal("users a\n")?.description == "ACL line 1: unknown keyword 'users' (expected 'user', 'topic' or 'pattern')")
    }
}
