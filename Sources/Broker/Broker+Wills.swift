// Will messages: kept per connection, waiting out their delay, stored for persistent sessions.
import LedgerCore
import LMDBStorage
import MQTTCodec

extension Broker {
    func setWill(_ will: MQTTWill?, sessionExpiryInterval: UInt32?, for session: BrokerSession) {
        locked {
            let state = session.state
            guard state.attachment == session.token else { return }
            state.will = will
            state.willSessionExpiry = sessionExpiryInterval
            tellClusterOfSession(state)
            var batch = StoreBatch()
            if let will {
                storeWill(will, state, due: 0, &batch)
            } else {
                forgetStoredWill(state, &batch)
            }
            submit(batch)
        }
    }

    /// A persistent session's will with a delay is kept in the store, so that a restart
    /// (or a crash) neither loses it nor sends it early. Not waited for: it promises nothing.
    func storeWill(_ will: MQTTWill, _ state: SessionState, due: Int64, _ batch: inout StoreBatch) {
        guard state.persistent, store != nil else { return }
        let delay = willDelay(will, state)
        guard delay > 0, let bytes = BrokerRecords.encodeWill(will, due: due, delay: delay) else {
            forgetStoredWill(state, &batch)
            return
        }
        state.willStored = true
        batch.put(.sessions, key: BrokerRecords.willKey(state.prefix), value: bytes)
    }

    func forgetStoredWill(_ state: SessionState, _ batch: inout StoreBatch) {
        guard state.willStored else { return }
        state.willStored = false
        batch.delete(.sessions, key: BrokerRecords.willKey(state.prefix))
    }

    /// Seconds to wait before a will goes: its Will Delay Interval, at most the session's
    /// expiry (0 for a non-persistent session: it ends with the connection).
    func willDelay(_ will: MQTTWill, _ state: SessionState) -> UInt32 {
        guard state.persistent else { return 0 }
        let delay = will.properties.willDelayInterval ?? 0
        return min(delay, state.willSessionExpiry ?? delay)
    }

    /// Makes `will` the session's pending will, published when `due` (the broker's clock, µs)
    /// unless cancelled first (`pendingWill` set to nil).
    func schedule(_ will: MQTTWill, _ state: SessionState, due: Int64) {
        state.pendingWill = will
        state.willDue = due
        willsScheduled &+= 1
        state.willOrder = willsScheduled
        waitingWills[ObjectIdentifier(state)] = state
        armTimer(for: due)
    }

    func willDelayEnded(_ state: SessionState) {
        guard let will = state.pendingWill else { return }
        state.pendingWill = nil
        publishWill(will, from: state)
        var batch = StoreBatch()
        forgetStoredWill(state, &batch)
        submit(batch)
    }

    /// Publishes a will message as if its client had sent it (under the lock). Its
    /// deliveries to persistent sessions go once durable; nobody waits for the commit.
    /// `publisher`: the will's own session, for No Local.
    func publishWill(_ will: MQTTWill, from publisher: SessionState) {
        guard TopicRules.isValidTopicName(will.topic) else { return }
        let publish = will.publish
        var batch = StoreBatch()
        _ = route(publish, from: publisher, &batch)
        if will.retain { keepRetained(publish, from: publisher.name, &batch) }
        willsPublished += 1
        _ = forwardToCluster(publish, submitWaiting(batch))
    }
}

extension MQTTWill {
    /// The PUBLISH the will becomes (without its Will Delay Interval).
    public var publish: MQTTPublish {
        var properties = self.properties
        properties.willDelayInterval = nil
        return MQTTPublish(
            topicName: topic, payload: payload, qos: qos, retain: retain,
            packetIdentifier: qos == .atMostOnce ? nil : 1, properties: properties)
    }
}

/// What a broker starting on its store does with the wills of sessions whose connection was up
/// when it stopped (a crash, SIGKILL: an unclean end of those connections).
public enum StoredWills: Sendable, Equatable {
    /// Published once their Will Delay Interval has passed from the start (one node).
    case publish
    /// A cluster node: only those of these sessions, whose connections this node ended at its
    /// start (`ClusterSessionAuthority.sessionsEndedAtStart`); the others a survivor recorded as
    /// lost and publishes itself, from the cluster's session records, unless they were resumed
    /// within the delay (`NATSClusterLink.publishWillOfLostSession`), so they go from the store.
    /// Wills already counting down when the broker stopped (their connection had ended) are
    /// still this node's to send.
    case publishOnlyFor(Set<SessionName>)
}
