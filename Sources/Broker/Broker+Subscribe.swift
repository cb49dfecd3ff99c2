// SUBSCRIBE and UNSUBSCRIBE.
import LMDBStorage
import MQTTCodec

extension Broker {
    func handleSubscribe(_ subscribe: MQTTSubscribe, from session: BrokerSession) async throws(BrokerError)
        -> [MQTTPacket]
    {
        let state = session.state
        var retainedPackets: [MQTTPacket] = []
        // Retained messages for a persistent session: sent by this handler after the commit,
        // so that they follow the SUBACK.
        var retainedHeld: [(session: SessionState, delivery: OutboundMessage)] = []
        let (codes, waiter) = try locked { () throws(BrokerError) -> ([MQTTReasonCode], CommitWaiter?) in
            try check(session)
            let v5 = state.version == .mqtt5
            if v5, let bad = subscribe.subscriptions.first(where: {
                $0.options.noLocal && TopicRules.splitShare($0.topicFilter) != nil
            }) {
                throw BrokerError(.protocolError, "No Local on the shared subscription '\(bad.topicFilter)' (MQTT-3.8.3-4)")
            }
            let identifier = v5 ? subscribe.properties.subscriptionIdentifiers.first : nil
            var batch = StoreBatch()
            var codes: [MQTTReasonCode] = []
            codes.reserveCapacity(subscribe.subscriptions.count)
            for subscription in subscribe.subscriptions {
                let filter = subscription.topicFilter
                if TopicRules.checkFilter(filter) != nil {
                    codes.append(v5 ? .topicFilterInvalid : .unspecifiedError)
                    continue
                }
                if !state.readsServerTopics, Self.isServerTopic(TopicRules.splitShare(filter).map { String($0.filter) } ?? filter) {
                    codes.append(v5 ? .notAuthorized : .unspecifiedError)
                    continue
                }
                // A filter the session holds is replaced, whatever the count; a new one past the
                // limit is refused on its own (the others in the packet still count).
                if state.subscriptions[filter] == nil, state.subscriptions.count >= currentLimits.maxSubscriptionsPerSession {
                    codes.append(v5 ? .quotaExceeded : .unspecifiedError)
                    note(.maxSubscriptionsPerSession, state.name)
                    continue
                }
                let shared = TopicRules.splitShare(filter) != nil
                var options = subscription.options
                if !v5 { options = MQTTSubscriptionOptions(qos: options.qos) }
                subscriptionStamps += 1
                let subscriber = Subscriber(
                    session: state, options: options, identifier: identifier, stamp: subscriptionStamps)
                let previous = state.subscriptions.updateValue(subscriber, forKey: filter)
                let existed = previous != nil
                tree.insert(filter, subscriber)
                batch.undoOnFailure(.subscribed(state, filter: filter, added: subscriber, previous: previous))
                if state.persistent, store != nil {
                    batch.put(
                        .sessions, key: BrokerRecords.subscriptionKey(state.prefix, filter),
                        value: BrokerRecords.subscriptionValue(state.prefix, filter, options, identifier))
                }
                codes.append(MQTTReasonCode(rawValue: options.qos.rawValue))
                // Shared subscriptions get no retained messages (MQTT 5.0 section 4.8.2).
                let sendRetained = switch options.retainHandling {
                case .sendOnSubscribe: !shared
                case .sendOnNewSubscribe: !shared && !existed
                case .doNotSend: false
                }
                if sendRetained, !retained.isEmpty {
                    sendRetainedMessages(filter, subscriber, state, &batch, &retainedPackets)
                }
            }
            retainedHeld = batch.takeHeld()
            // In a cluster, another node may take the session on: its subscriptions are kept
            // there before the SUBACK.
            return (codes, joined(submitWaiting(batch), tellClusterOfSession(state), operation: "cluster session state"))
        }
        if let waiter {
            let result = await waiter.wait()
            if !retainedHeld.isEmpty {
                // Stored now (or never): send what is in flight, after the SUBACK.
                let sendable = result.isSuccess
                locked {
                    let now = clock()
                    var batch = StoreBatch()
                    for (_, delivery) in retainedHeld {
                        delivery.durable = true
                        guard sendable, delivery.state != .queued, !delivery.sent, state.sink != nil,
                            state.inflight[delivery.packetIdentifier] === delivery
                        else { continue }
                        guard let packet = transmit(delivery, state, now: now, &batch) else { continue }
                        // Taken over meanwhile: the new connection gets it through its sink.
                        if state.attachment == session.token { retainedPackets.append(packet) } else { post(state, packet) }
                    }
                    pump(state, &batch)
                    submit(batch)
                }
            }
            if case .failure(let error) = result { throw .storage(error) }
        }
        return [.suback(MQTTSubAck(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes))]
            + retainedPackets
    }

    func handleUnsubscribe(_ unsubscribe: MQTTUnsubscribe, from session: BrokerSession)
        async throws(BrokerError) -> [MQTTPacket]
    {
        let state = session.state
        let (codes, waiter) = try locked { () throws(BrokerError) -> ([MQTTReasonCode], CommitWaiter?) in
            try check(session)
            var batch = StoreBatch()
            var codes: [MQTTReasonCode] = []
            for filter in unsubscribe.topicFilters {
                if TopicRules.checkFilter(filter) != nil {
                    codes.append(.topicFilterInvalid)
                    continue
                }
                guard let removed = state.subscriptions.removeValue(forKey: filter) else {
                    codes.append(.noSubscriptionExisted)
                    continue
                }
                tree.remove(filter, session: state)
                batch.undoOnFailure(.unsubscribed(state, filter: filter, removed: removed))
                if state.persistent, store != nil {
                    batch.delete(.sessions, key: BrokerRecords.subscriptionKey(state.prefix, filter))
                }
                codes.append(.success)
            }
            tellClusterOfSession(state)
            return (codes, submitWaiting(batch))
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
        let v5 = state.version == .mqtt5
        return [.unsuback(MQTTUnsubAck(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: v5 ? codes : []))]
    }
}
