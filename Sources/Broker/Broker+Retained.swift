// Retained messages: kept per topic, sent to new subscriptions.
import LedgerCore
import LMDBStorage
import MQTTCodec

extension Broker {
    /// Replaces (or, with an empty payload, deletes) the retained message of a topic, unless
    /// the retained limits refuse it (`retainedRefusal`; the caller may have answered for that
    /// already): then it is noted for `publisher` and nothing is kept.
    func keepRetained(_ publish: MQTTPublish, from publisher: SessionName?, _ batch: inout StoreBatch) {
        let topic = publish.topicName
        if let limit = retainedRefusal(publish) {
            if let publisher { note(limit, publisher) }
            return
        }
        if publish.payload.readableBytes == 0 {
            if let previous = retained.removeValue(forKey: topic), store != nil {
                batch.delete(.retained, key: BrokerRecords.retainedKey(topic))
                batch.undoOnFailure(.retained(topic: topic, kept: nil, previous: previous))
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
        let message = Message(publish: kept, receivedAt: now)
        let previous = retained.updateValue(message, forKey: topic)
        if store != nil, let bytes = BrokerRecords.encodeMessage(kept, receivedAt: now) {
            batch.put(.retained, key: BrokerRecords.retainedKey(topic), value: bytes)
            batch.undoOnFailure(.retained(topic: topic, kept: message, previous: previous))
        }
    }

    /// Queues the retained messages matching a new subscription. Those that can go at once
    /// are appended to `packets` (the caller returns them after the SUBACK); those of a
    /// persistent session are held in `batch` until their store write is committed.
    func sendRetainedMessages(
        _ filter: String, _ subscriber: Subscriber, _ session: SessionState, _ batch: inout StoreBatch,
        _ packets: inout [MQTTPacket]
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
                if store != nil { batch.delete(.retained, key: BrokerRecords.retainedKey(topic)) }
                continue
            }
            let qos = min(message.publish.qos, subscriber.options.qos)
            sequence += 1
            let delivery = OutboundMessage(sequence: sequence, message: message, qos: qos, retain: true, identifiers: identifiers)
            if qos == .atMostOnce {
                if let packet = transmit(delivery, session, now: now, &batch) { packets.append(packet) }
                continue
            }
            if session.persistent, store != nil { storeAndHold(delivery, for: session, &batch) }
            if let packet = enqueue(delivery, session, &batch) { packets.append(packet) }
        }
    }
}
