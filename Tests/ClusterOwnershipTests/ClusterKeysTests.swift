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
