// Retained messages: kept per topic, sent to new subscriptions.
import LMDBStorage
import MQTTCodec

extension Broker {
    /// Replaces (or, with an empty payload, deletes) the retained message of a topic.
    func keepRetained(_ publish: MQTTPublish, _ ops: inout [BrokerStoreOperation]) {
        let topic = publish.topicName
        if publish.payload.readableBytes == 0 {
            if retained.removeValue(forKey: topic) != nil, store != nil {
                ops.append(.delete(.retained, key: Array(topic.utf8)))
            }
            return
        }
        var kept = publish
        clean(&kept.properties)
        kept.packetIdentifier = nil
        kept.duplicate = false
        kept.retain = true
        let now = clock()
        kept.payload = Message.compacted(kept.payload)
        retained[topic] = Message(publish: kept, receivedAt: now)
        if store != nil, let bytes = BrokerRecords.encodeMessage(kept, receivedAt: now) {
            ops.append(.put(.retained, key: Array(topic.utf8), value: bytes))
        }
    }

    /// Queues the retained messages matching a new subscription. Those that can go at once
    /// are appended to `packets` (the caller returns them after the SUBACK); those of a
    /// persistent session go once their store write is committed (`pending`).
    func sendRetainedMessages(
        _ filter: String, _ subscriber: Subscriber, _ session: SessionState, _ ops: inout [BrokerStoreOperation],
        _ packets: inout [MQTTPacket], _ pending: inout [Delivery]
    ) {
        let now = clock()
        let identifiers = subscriber.identifier.map { [$0] } ?? []
        let wildcard = filter.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
        let matching: [(key: String, value: Message)] = wildcard
            ? retained.filter { TopicRules.matches(filter: filter, topic: $0.key) }
                .sorted { $0.value.receivedAt < $1.value.receivedAt }
            : retained[filter].map { [(key: filter, value: $0)] } ?? []
        for (topic, message) in matching {
            if isExpired(message, now: now) {
                retained[topic] = nil
                if store != nil { ops.append(.delete(.retained, key: Array(topic.utf8))) }
                continue
            }
            let qos = min(message.publish.qos, subscriber.options.qos)
            sequence += 1
            let delivery = Delivery(sequence: sequence, message: message, qos: qos, retain: true, identifiers: identifiers)
            if qos == .atMostOnce {
                if let packet = transmit(delivery, session, now: now, &ops) { packets.append(packet) }
                continue
            }
            if session.persistent, store != nil {
                if message.storeKey == 0, let bytes = BrokerRecords.encodeMessage(message.publish, receivedAt: message.receivedAt) {
                    sequence += 1
                    message.storeKey = sequence
                    ops.append(.put(.messages, key: BrokerRecords.messageKey(sequence), value: bytes))
                }
                if message.storeKey != 0 {
                    message.references += 1
                    delivery.stored = true
                    delivery.durable = false
                    pending.append(delivery)
                }
            }
            enqueue(delivery, session, &ops, into: &packets)
        }
    }
}
