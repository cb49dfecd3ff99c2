import ClusterOwnership
import LedgerCore
import Testing

@Suite("Cluster keys")
struct ClusterKeysTests {
    @Test func namesWithSlashesStayInsideTheirOwnPrefix() {
        let keys = ClusterKeys()
        let client = AuthenticationName(unchecked: "Plant/A%1")
        let slot = keys.slot(3, of: client)
        #expect(slot == "/custody/v1/clients/plant%2Fa%251/slots/3")
        #expect(keys.slot(ofKey: slot)?.client == "plant/a%1")
        #expect(keys.slot(ofKey: slot)?.index == 3)
        let session = keys.session(SessionName(unchecked: "a/b"))
        #expect(keys.sessionName(ofKey: session) == "a/b")
        #expect(keys.nodeID(ofKey: keys.node("n1")) == "n1")
        #expect(keys.sessionName(ofKey: keys.node("n1")) == nil)
    }
}

@Suite("Cluster keys: the watched range")
struct ClusterWatchedRangeTests {
    @Test func theWatchedRangeHoldsNodeAndSessionKeysOnly() {
        let keys = ClusterKeys()
        let (start, end) = keys.nodesAndSessions
        func inside(_ key: String) -> Bool { key >= start && key < end }
        #expect(inside(keys.node("n1")))
        #expect(inside(keys.session(SessionName(unchecked: "\u{10FFFF}"))))
        #expect(inside(keys.session(SessionName(unchecked: "s"))))
        #expect(!inside(keys.slot(0, of: AuthenticationName(unchecked: "zzz"))))
        #expect(!inside(keys.expiryLeader))
        #expect(!inside(keys.root + "/sessionz"))
    }
}
