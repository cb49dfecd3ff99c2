// The server's own topics ($custody/...): who may read them, and the server's publishes there.
import LMDBStorage
import MQTTCodec
import NIOCore

extension Broker {
    /// Topics under this prefix are the server's own (lifecycle events): no client may
    /// publish there (v5: 0x87; QoS 0 and 3.1.1: dropped), and only sessions allowed by
    /// `BrokerSession.allowServerTopics` may subscribe. Wildcards at the first level never
    /// match them (`$` rule, 4.7.2).
    public static let serverTopicPrefix = "$custody/"

    static func isServerTopic(_ topicOrFilter: String) -> Bool {
        topicOrFilter.utf8.starts(with: serverTopicPrefix.utf8) || topicOrFilter == "$custody"
    }

    /// Publishes one of the server's own messages (not retained), routed like a client's
    /// PUBLISH and shown to the cluster link; deliveries to persistent sessions go once durable, and nobody waits for that.
    /// Calls made one after another are routed (and so delivered to each session) in order.
    public func publishFromServer(topic: String, payload: ByteBuffer, qos: MQTTQoS) {
        guard TopicRules.isValidTopicName(topic) else { return }
        locked {
            guard !closed else { return }
            let publish = MQTTPublish(
                topicName: topic, payload: payload, qos: qos, retain: false,
                packetIdentifier: qos == .atMostOnce ? nil : 1)
            var batch = StoreBatch()
            _ = route(publish, from: nil, &batch)
            serverPublished += 1
            // In a cluster, event subscribers on every node get them, in this node's order.
            _ = forwardToCluster(publish, submitWaiting(batch))
        }
    }

    /// Whether a server message on `topic` could reach anyone right now: false when no
    /// subscription can match it. Topics beginning with `$` are matched only by filters that
    /// start with the same first level (wildcards at the first level skip them, also in
    /// shares), so for those this is one dictionary look-up at the tree's root.
    /// `publishFromServer` would route such a message to nobody; the caller may skip making
    /// it and count it with `countServerPublished`.
    public func mayDeliverServerTopic(_ topic: String) -> Bool {
        guard topic.utf8.first == UInt8(ascii: "$") else { return true }
        let first = topic.utf8.firstIndex(of: UInt8(ascii: "/")).map { topic[..<$0] } ?? topic[...]
        // In a cluster, another node may have a subscriber for it.
        return locked { !closed && (clusterLink != nil || tree.root.children[first] != nil) }
    }

    /// Server messages that went to nobody (see `mayDeliverServerTopic`), counted as
    /// `publishFromServer` counts those it routes.
    public func countServerPublished(_ count: Int) {
        locked { if !closed { serverPublished += count } }
    }

    func allowServerTopics(_ allowed: Bool, for session: BrokerSession) {
        locked {
            guard session.state.attachment == session.token else { return }
            session.state.readsServerTopics = allowed
        }
    }
}
