import Authorization
import CustodyTesting
import Foundation
import HTTPPublish
import LedgerCore
import Logging
import Testing

@testable import Broker
@testable import CustodyServer

// HTTP publish's 503 (issue 21): the gateway and Hummingbird server of `custody`, in-process,
// over a real broker store made to fail its next commit (`BrokerStore.failNextCommits`), as
// a full or failing disk would; curl over 127.0.0.1.

@Suite("HTTP publish: a store that cannot write")
struct HTTPPublishStoreTests {
    @Test func aFailedCommitIs503AndNothingIsKept() async throws {
        let directory = scratchDirectory("http-503")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let logger = Logger(label: "custody.http")
        let gateway = HTTPPublishGateway(
            rules: .init(authority: nil, access: OpenAccess(), messagesPerSecond: 0), broker: broker, logger: logger)
        let port = try freeLoopbackPort()
        let server = try HTTPPublishServer(
            host: "127.0.0.1", port: port, tls: nil, maxMessageBytes: 1 << 16, gate: gateway, logger: logger,
            bound: { _ in })
        let running = Task { try await server.application.run() }
        defer { running.cancel() }
        let url = "http://127.0.0.1:\(port)/mqtt/messages?topic=plant/a"
        let headers = ["mqtt-qos: 1", "mqtt-retain: 1"]
        let store = try #require(broker.store)
        try await offPool {
            let deadline = Date().addingTimeInterval(10)
            while !acceptsConnections(port: port), Date() < deadline { usleep(20_000) }
            store.failNextCommits(with: .storage(operation: "mdb_txn_commit", code: 5, message: "Input/output error"))
            let refused = try curlPost(url, user: "backend:x", headers: headers, body: "v1")
            #expect(refused.status == 503 && refused.body.contains("could not be stored"), "\(refused)")
            #expect(broker.locked { broker.retained["plant/a"] } == nil, "a write that failed is not kept")
            let accepted = try curlPost(url, user: "backend:x", headers: headers, body: "v2")
            #expect(accepted.status == 204, "\(accepted)")
        }
        #expect(broker.locked { broker.retained["plant/a"] } != nil)
        var stored = 0
        try broker.store?.forEach(.retained) { _, _ in stored += 1 }
        #expect(stored == 1, "the retained message is on disk before the 204")
    }
}
