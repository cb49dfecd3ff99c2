// A PUBLISH from a publisher that holds no MQTT session (HTTP publish).
import LedgerCore
import MQTTCodec

/// How the broker took a PUBLISH made without a session.
public enum SessionlessPublishOutcome: Sendable, Equatable {
    /// Routed (and retained when asked); for QoS 1, durable. `matched`: sessions it went to.
    case accepted(matched: Int)
    /// The server's own topics (`$custody/...`): no client may publish there.
    case serverTopic
    /// Marked UTF-8 (Payload Format Indicator 1) and not UTF-8.
    case payloadFormatInvalid
    /// A retained message past `maxRetainedBytes` or `maxRetainedMessages`: not accepted.
    case retainedRefused(BrokerLimit)
}

extension Broker {
    /// Routes `publish` as a client's PUBLISH is routed (QoS 0 or 1; retained as asked, within
    /// the retained limits), for `publisher` (its session name stands in the limits' notices).
    /// Returns once whatever it stored is durable (QoS 1); QoS 0 returns at once. Throws
    /// `.storage` when the store could not commit it (nothing of it is then kept) and when the
    /// broker is closed.
    public func publishWithoutSession(_ publish: MQTTPublish, publisher: PublisherFacts) async throws(BrokerError)
        -> SessionlessPublishOutcome
    {
        guard TopicRules.isValidTopicName(publish.topicName) else {
            throw BrokerError(.topicNameInvalid, "topic name '\(publish.topicName)' is not valid here")
        }
        if Self.isServerTopic(publish.topicName) { return .serverTopic }
        if publish.properties.payloadFormatIndicator == .utf8, !Self.isValidUTF8(publish.payload) { return .payloadFormatInvalid }
        let (outcome, waiter) = try locked { () throws(BrokerError) -> (SessionlessPublishOutcome, CommitWaiter?) in
            guard !closed else { throw .storage(.closed) }
            if publish.retain, let refused = retainedRefusal(publish) {
                note(refused, SessionName(unchecked: publisher.sessionName))
                return (.retainedRefused(refused), nil)
            }
            var batch = StoreBatch()
            let matched = route(publish, from: nil, &batch)
            if publish.retain { keepRetained(publish, from: SessionName(unchecked: publisher.sessionName), &batch) }
            showTap(publish, publisher, &batch)
            return (.accepted(matched: matched), forwardToCluster(publish, submitWaiting(batch)))
        }
        if let waiter, publish.qos != .atMostOnce, case .failure(let error) = await waiter.wait() {
            throw .storage(error)
        }
        return outcome
    }
}
