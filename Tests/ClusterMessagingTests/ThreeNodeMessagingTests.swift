import CustodyTesting
import Foundation
import Testing

extension MessagingSuites {
    @Suite("Messages across three custody nodes on NATS JetStream")
    struct ThreeNodeMessagingTests {
        /// A publisher on node 1, subscribers on nodes 2 and 3: QoS 0, 1 and 2 with wildcards
        /// (`a/#` matching `a` itself), each node's subscribers getting every matching message in
        /// the publisher's order, and a retained message published on node 1 given to new
        /// subscribers on nodes 2 and 3.
        @Test func publisherOnOneNodeSubscribersOnTheOthers() async throws {
            try await offPool {
                try withMessagingCluster("three-qos") { cluster in
                    let retained = try PahoClient.publisher(
                        port: cluster[0].port, id: "retainer", topic: "r/state", count: 1, qos: 1, prefix: "kept", retain: true)
                    try retained.spawned.waitForOutput(containing: "DONE", timeout: 30)
                    let two = try PahoClient.subscriber(port: cluster[1].port, id: "sub-2", filters: ["t/+/c", "r/#"], qos: 2)
                    let three = try PahoClient.subscriber(port: cluster[2].port, id: "sub-3", filters: ["t/#", "r/#"], qos: 1)
                    // The retained message: kept on every node, given on subscribe.
                    try two.wait { $0.messages.contains("r/state kept-0 q1 r1") }
                    try three.wait { $0.messages.contains("r/state kept-0 q1 r1") }
                    for (qos, prefix) in [(0, "zero"), (1, "one"), (2, "two")] {
                        let publisher = try PahoClient.publisher(
                            port: cluster[0].port, id: "pub-\(qos)", topic: "t/b/c", count: 50, qos: qos, prefix: prefix)
                        try publisher.spawned.waitForOutput(containing: "DONE", timeout: 60)
                    }
                    let parent = try PahoClient.publisher(port: cluster[0].port, id: "pub-t", topic: "t", count: 3, qos: 1, prefix: "parent")
                    try parent.spawned.waitForOutput(containing: "DONE", timeout: 30)
                    let stream = ["zero", "one", "two"].flatMap { prefix in (0..<50).map { "\(prefix)-\($0)" } }
                    try two.wait { $0.payloads.filter { !$0.hasPrefix("kept") }.count >= 150 }
                    try three.wait { $0.payloads.filter { !$0.hasPrefix("kept") }.count >= 153 }
                    // Each node in the publisher's order, each QoS as granted (min of both).
                    #expect(two.payloads.filter { !$0.hasPrefix("kept") } == stream)
                    #expect(three.payloads.filter { !$0.hasPrefix("kept") && !$0.hasPrefix("parent") } == stream)
                    #expect(three.payloads.filter { $0.hasPrefix("parent") } == ["parent-0", "parent-1", "parent-2"])
                    #expect(two.messages.contains("t/b/c two-7 q2 r0"))
                    #expect(three.messages.contains("t/b/c two-7 q1 r0"))
                    #expect(two.messages.contains("t/b/c zero-3 q0 r0"))
                    #expect(!two.payloads.contains { $0.hasPrefix("parent") })
                    // Nothing twice on the publisher's own node either: a subscriber there gets one copy.
                    let one = try PahoClient.subscriber(port: cluster[0].port, id: "sub-1", filters: ["t/b/c"], qos: 1)
                    let again = try PahoClient.publisher(port: cluster[0].port, id: "pub-again", topic: "t/b/c", count: 20, qos: 1, prefix: "again")
                    try again.spawned.waitForOutput(containing: "DONE", timeout: 30)
                    try three.wait { $0.payloads.filter { $0.hasPrefix("again") }.count >= 20 }
                    try one.wait { $0.payloads.filter { $0.hasPrefix("again") }.count >= 20 }
                    Thread.sleep(forTimeInterval: 0.5)
                    #expect(one.payloads.filter { $0.hasPrefix("again") } == (0..<20).map { "again-\($0)" })
                    #expect(three.payloads.filter { $0.hasPrefix("again") } == (0..<20).map { "again-\($0)" })
                    for client in [one, two, three] { client.stop() }
                }
            }
        }

        /// Retained messages published (and one cleared) before a node first starts are given
        /// to subscribers on that node: the cluster keeps each topic's last retained message.
        @Test func retainedMessagesReachANodeStartedLater() async throws {
            try await offPool {
                try withMessagingCluster("retained-later") { cluster in
                    for (topic, qos, empty) in [("r/a", 1, false), ("r/b", 0, false), ("r/c", 1, false), ("r/c", 1, true)] {
                        let publisher = try PahoClient.publisher(
                            port: cluster[0].port, id: "retain-\(topic.last!)\(empty)", topic: topic, count: 1, qos: qos,
                            prefix: "kept", retain: true, empty: empty)
                        try publisher.spawned.waitForOutput(containing: "DONE", timeout: 30)
                    }
                    // QoS 0 is best effort: wait until node 2 has it before starting node 4.
                    let two = try PahoClient.subscriber(port: cluster[1].port, id: "sub-2", filters: ["r/#"])
                    try two.wait { $0.messages.count >= 2 }
                    try cluster.addNode()
                    let four = try PahoClient.subscriber(port: cluster[3].port, id: "sub-4", filters: ["r/#"])
                    try four.wait { $0.messages.count >= 2 }
                    Thread.sleep(forTimeInterval: 0.3)
                    #expect(Set(four.messages) == ["r/a kept-0 q1 r1", "r/b kept-0 q0 r1"])
                    #expect(Set(two.messages) == ["r/a kept-0 q1 r1", "r/b kept-0 q0 r1"])
                    two.stop()
                    four.stop()
                }
            }
        }

        /// Members of one shared subscription on nodes 2 and 3, a QoS 1 publisher on node 1:
        /// each message goes to exactly one member in the whole cluster, both members get some,
        /// and a plain subscriber still gets every message.
        @Test func sharedSubscriptionBalancesAcrossNodes() async throws {
            try await offPool {
                try withMessagingCluster("shared") { cluster in
                    let two = try PahoClient.subscriber(port: cluster[1].port, id: "member-2", filters: ["$share/g/w/#"])
                    let three = try PahoClient.subscriber(port: cluster[2].port, id: "member-3", filters: ["$share/g/w/#"])
                    let plain = try PahoClient.subscriber(port: cluster[2].port, id: "plain-3", filters: ["w/#"])
                    // Each node opens its pull on the share's consumer within half a second.
                    Thread.sleep(forTimeInterval: 1.5)
                    let publisher = try PahoClient.publisher(port: cluster[0].port, id: "pub-1", topic: "w/x", count: 200, qos: 1, prefix: "w")
                    try publisher.spawned.waitForOutput(containing: "DONE", timeout: 60)
                    try plain.wait { $0.payloads.count >= 200 }
                    try two.wait { $0.payloads.count + three.payloads.count >= 200 }
                    Thread.sleep(forTimeInterval: 0.5)
                    let all = two.payloads + three.payloads
                    #expect(all.count == 200, "each message once: \(two.payloads.count) + \(three.payloads.count)")
                    #expect(Set(all) == Set((0..<200).map { "w-\($0)" }))
                    #expect(!two.payloads.isEmpty && !three.payloads.isEmpty, "both members: \(two.payloads.count) + \(three.payloads.count)")
                    #expect(plain.payloads == (0..<200).map { "w-\($0)" })
                    for client in [two, three, plain] { client.stop() }
                }
            }
        }

        /// The publisher's node is killed (SIGKILL) in the middle of a QoS 1 stream: every
        /// message it PUBACKed reaches the subscribers on the other two nodes. Duplicates are
        /// allowed at QoS 1, counted and reported.
        @Test func publishersNodeKilledLosesNothingAcknowledged() async throws {
            try await offPool {
                try withMessagingCluster("three-kill") { cluster in
                    let one = try PahoClient.subscriber(port: cluster[0].port, id: "sub-1", filters: ["k/#"])
                    let three = try PahoClient.subscriber(port: cluster[2].port, id: "sub-3", filters: ["k/#"])
                    let publisher = try PahoClient.publisher(
                        port: cluster[1].port, id: "pub-2", topic: "k/stream", count: 5_000, qos: 1, prefix: "k")
                    try publisher.wait(timeout: 60) { $0.acknowledged.count >= 500 }
                    cluster.killNode(1)
                    _ = try? publisher.spawned.waitForExit(timeout: 10)
                    let acknowledged = Set(publisher.acknowledged)
                    #expect(acknowledged.count >= 500)
                    for (name, subscriber) in [("n1", one), ("n3", three)] {
                        try subscriber.wait(timeout: 60) { acknowledged.isSubset(of: Set($0.payloads)) }
                        let received = subscriber.payloads
                        let lost = acknowledged.subtracting(received).count
                        let duplicates = received.count - Set(received).count
                        print("cluster kill test: subscriber on \(name): acknowledged \(acknowledged.count), received \(received.count), lost \(lost), duplicates \(duplicates)")
                        #expect(lost == 0)
                    }
                    one.stop()
                    three.stop()
                }
            }
        }

        /// A subscriber's node killed (SIGKILL) during a QoS 1 stream: the publisher's PUBACKs
        /// go on, and the subscriber on the third node gets the whole stream, in order, once.
        @Test func subscribersNodeKilledOthersGoOn() async throws {
            try await offPool {
                try withMessagingCluster("three-sub-kill") { cluster in
                    let two = try PahoClient.subscriber(port: cluster[1].port, id: "sub-2", filters: ["s/#"])
                    let three = try PahoClient.subscriber(port: cluster[2].port, id: "sub-3", filters: ["s/#"])
                    let publisher = try PahoClient.publisher(
                        port: cluster[0].port, id: "pub-1", topic: "s/stream", count: 2_000, qos: 1, prefix: "s")
                    try two.wait(timeout: 60) { $0.payloads.count >= 200 }
                    cluster.killNode(1)
                    try publisher.spawned.waitForOutput(containing: "DONE", timeout: 120)
                    let acknowledged = Set(publisher.acknowledged)
                    #expect(acknowledged.count == 2_000)
                    try three.wait(timeout: 60) { acknowledged.isSubset(of: Set($0.payloads)) }
                    #expect(three.payloads == (0..<2_000).map { "s-\($0)" })
                    three.stop()
                    two.stop()
                }
            }
        }
    }

    @Suite("Lifecycle events and start-up across custody nodes")
    struct ClusterEventsTests {
        /// Sessions connect and disconnect on nodes 1 and 2; an event subscriber on node 3 gets
        /// every node's lifecycle events, each node's in its ledger order.
        @Test func lifecycleEventsFromEveryNode() async throws {
            try await offPool {
                try withMessagingCluster("events", extra: ["--event-subscriber", "ops"]) { cluster in
                    let events = try PahoClient.subscriber(
                        port: cluster[2].port, id: "ops-3", filters: ["$custody/events/clients/+/sessions/+"], user: "ops")
                    for (node, session) in [(0, "on-one"), (1, "on-two")] {
                        let client = try PahoClient.subscriber(port: cluster[node].port, id: session, filters: ["x"])
                        // The connection lost: a disconnected event as well.
                        client.stop()
                    }
                    func kinds(_ session: String) -> [String] {
                        events.messages.filter { $0.contains("/sessions/\(session) ") }.compactMap { line in
                            ["\"kind\":\"connected\"", "\"kind\":\"disconnected\""].first { line.contains($0) }
                        }
                    }
                    try events.wait { _ in kinds("on-one").count >= 2 && kinds("on-two").count >= 2 }
                    #expect(kinds("on-one") == ["\"kind\":\"connected\"", "\"kind\":\"disconnected\""])
                    #expect(kinds("on-two") == ["\"kind\":\"connected\"", "\"kind\":\"disconnected\""])
                    events.stop()
                }
            }
        }

        @Test func unreachableNATSIsNamed() async throws {
            try await offPool {
                let etcd = try RunningEtcd("no-nats")
                defer { etcd.cleanUp() }
                let port = try freeLoopbackPort()
                let (status, _, error) = try run(try builtProduct("custody").path, [
                    "--data-dir", scratchDirectory("no-nats"), "--listen", "127.0.0.1:0",
                    "--cluster-etcd", etcd.url, "--node-id", "n1", "--cluster-nats", "nats://127.0.0.1:\(port)",
                ], timeout: 60)
                #expect(status == 1)
                #expect(error.contains("cannot carry the cluster's messages on NATS nats://127.0.0.1:\(port)"), "stderr: \(error)")
            }
        }
    }

    @Suite("Messages across custody nodes on a 3-server NATS cluster")
    struct NATSClusterMessagingTests {
        /// Three NATS servers routed on 127.0.0.1, the stream replicated three times; the server
        /// the publisher's node is connected to is stopped during a QoS 1 stream: the node moves
        /// to another server, and every PUBACKed message reaches the subscriber on node 3.
        @Test func oneNATSServerStoppedDuringAStream() async throws {
            try await offPool {
                try withMessagingCluster("nats3", natsServers: 3) { cluster in
                    let three = try PahoClient.subscriber(port: cluster[2].port, id: "sub-3", filters: ["c/#"])
                    let publisher = try PahoClient.publisher(
                        port: cluster[0].port, id: "pub-1", topic: "c/stream", count: 3_000, qos: 1, prefix: "c")
                    try publisher.wait(timeout: 60) { $0.acknowledged.count >= 300 }
                    cluster.nats.stop(server: 0)
                    try publisher.spawned.waitForOutput(containing: "DONE", timeout: 180)
                    let acknowledged = Set(publisher.acknowledged)
                    #expect(acknowledged.count == 3_000)
                    // Messages a stopped server had handed out unacknowledged come again after the
                    // consumers' ack wait (30 s), more than once on a loaded machine.
                    try three.wait(timeout: 200) { acknowledged.isSubset(of: Set($0.payloads)) }
                    let received = three.payloads
                    print("NATS server stopped: acknowledged \(acknowledged.count), received \(received.count), lost \(acknowledged.subtracting(received).count), duplicates \(received.count - Set(received).count)")
                    three.stop()
                }
            }
        }
    }
}
