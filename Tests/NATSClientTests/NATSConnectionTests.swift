import CustodyTesting
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import NATSClient

/// Collects what a subscription receives, and waits for a count of it.
final class Inbox: @unchecked Sendable {
    private let lock = NIOLock()
    private var received: [NATSMessage] = []

    func add(_ message: NATSMessage) { lock.withLock { received.append(message) } }
    var messages: [NATSMessage] { lock.withLock { received } }

    func wait(for count: Int, timeout: Double = 10) async throws -> [NATSMessage] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let now = messages
            if now.count >= count { return now }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        throw TestFailure.timeout("\(count) messages, got \(messages.count)")
    }
}

func connect(_ urls: [String], noEcho: Bool = false) async throws -> NATSConnection {
    try await NATSConnection.connect(NATSOptions(servers: urls.compactMap(NATSServer.init(url:)), noEcho: noEcho))
}

@Suite("NATSConnection against a real nats-server")
struct NATSConnectionTests {
    @Test func publishSubscribeWithHeadersAndUnsubscribe() async throws {
        let nats = try await offPool { try RunningNATS("client-pubsub") }
        defer { nats.cleanUp() }
        let publisher = try await connect([nats.url])
        let subscriber = try await connect([nats.url])
        #expect(subscriber.info?.jetstream == true)
        let inbox = Inbox()
        let sid = try subscriber.subscribe("a.*.c") { inbox.add($0) }
        try await subscriber.flush()
        try publisher.publish("a.b.c", payload: ByteBuffer(string: "plain"))
        try publisher.publish("a.b.c", payload: ByteBuffer(string: "with"), headers: NATSHeaders([("Custody-Node", "n1")]))
        try publisher.publish("a.b.d", payload: ByteBuffer(string: "not matched"))
        let big = ByteBuffer(repeating: 7, count: 200_000)
        try publisher.publish("a.x.c", payload: big)
        let got = try await inbox.wait(for: 3)
        #expect(got.map { String(buffer: $0.payload).prefix(5) } == ["plain", "with", "\u{7}\u{7}\u{7}\u{7}\u{7}"])
        #expect(got[0].headers == nil)
        #expect(got[1].headers?["custody-node"] == "n1")
        #expect(got[2].payload == big)
        try subscriber.unsubscribe(sid)
        try await subscriber.flush()
        try publisher.publish("a.b.c", payload: ByteBuffer(string: "after"))
        try await publisher.flush()
        try await subscriber.flush()
        #expect(inbox.messages.count == 3)
        await publisher.close()
        await subscriber.close()
    }

    @Test func noEchoSkipsTheConnectionsOwnPublishes() async throws {
        let nats = try await offPool { try RunningNATS("client-echo") }
        defer { nats.cleanUp() }
        let quiet = try await connect([nats.url], noEcho: true)
        let other = try await connect([nats.url])
        let inbox = Inbox()
        try quiet.subscribe("e") { inbox.add($0) }
        try await quiet.flush()
        try quiet.publish("e", payload: ByteBuffer(string: "own"))
        try other.publish("e", payload: ByteBuffer(string: "other"))
        let got = try await inbox.wait(for: 1)
        try await quiet.flush()
        #expect(inbox.messages.map { String(buffer: $0.payload) } == ["other"])
        #expect(got.count == 1)
        await quiet.close()
        await other.close()
    }

    @Test func requestReplyMuxedOnOneInbox() async throws {
        let nats = try await offPool { try RunningNATS("client-request") }
        defer { nats.cleanUp() }
        let server = try await connect([nats.url])
        let client = try await connect([nats.url])
        try server.subscribe("echo") { message in
            guard let reply = message.replyTo else { return }
            try? server.publish(reply, payload: ByteBuffer(string: "re:" + String(buffer: message.payload)))
        }
        try await server.flush()
        let answers = try await withThrowingTaskGroup(of: String.self) { group in
            for index in 0..<50 {
                group.addTask { String(buffer: try await client.request("echo", payload: ByteBuffer(string: "\(index)")).payload) }
            }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(answers == Set((0..<50).map { "re:\($0)" }))
        await #expect(throws: NATSError.self) { try await client.request("nobody.here", payload: ByteBuffer()) }
        await server.close()
        await #expect(throws: NATSError.self) { try await server.request("echo", payload: ByteBuffer()) }
        await client.close()
    }

    /// Connected to one server of three, the client learns the others from INFO's connect_urls;
    /// when its server dies it moves to another, and its subscription keeps receiving.
    @Test func reconnectsToAnotherServerOfTheCluster() async throws {
        let nats = try await offPool { try RunningNATS("client-reconnect", servers: 3) }
        defer { nats.cleanUp() }
        let subscriber = try await connect([nats.urls[0]])
        let publisher = try await connect([nats.urls[2]])
        let inbox = Inbox()
        try subscriber.subscribe("r.>") { inbox.add($0) }
        try await subscriber.flush()
        // Routes carry the interest to the other servers.
        var seen = 0
        for attempt in 0..<100 where seen == 0 {
            try publisher.publish("r.probe", payload: ByteBuffer(string: "\(attempt)"))
            try await Task.sleep(nanoseconds: 50_000_000)
            seen = inbox.messages.count
        }
        #expect(seen > 0)
        #expect(subscriber.knownServers.count == 3)
        nats.stop(server: 0)
        let deadline = Date().addingTimeInterval(15)
        while subscriber.reconnectCount == 0, Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        #expect(subscriber.reconnectCount == 1)
        #expect(subscriber.connectedServer != NATSServer(url: nats.urls[0]))
        try await subscriber.flush()
        let before = inbox.messages.count
        var after = before
        for attempt in 0..<100 where after == before {
            try publisher.publish("r.after", payload: ByteBuffer(string: "\(attempt)"))
            try await Task.sleep(nanoseconds: 50_000_000)
            after = inbox.messages.count
        }
        #expect(inbox.messages.last?.subject == "r.after")
        await subscriber.close()
        await publisher.close()
    }

    @Test func connectFailsNamingTheServers() async throws {
        let port = try freeLoopbackPort()
        await #expect(throws: NATSError.self) { try await connect(["nats://127.0.0.1:\(port)"]) }
    }
}
