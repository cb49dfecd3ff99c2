// Rebuilding the in-memory state from the store at startup.
import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec

extension Broker {
    func load() throws {
        guard let store else { return }
        var messages: [UInt64: Message] = [:]
        var cleanup = StoreBatch()
        var highest: UInt64 = 0
        var loadedWills: [(SessionState, MQTTWill, Int64)] = []
        let now = clock()
        try store.forEach(.messages) { key, value in
            guard key.count == 8, let (publish, receivedAt) = BrokerRecords.decodeMessage(value) else {
                cleanup.delete(.messages, key: Array(key))
                return
            }
            let storeKey = UInt64(bigEndian: key.loadUnaligned(as: UInt64.self))
            let message = Message(publish: publish, receivedAt: receivedAt)
            message.storeKey = storeKey
            messages[storeKey] = message
            highest = max(highest, storeKey)
        }
        try store.forEach(.retained) { key, value in
            guard let (publish, receivedAt) = BrokerRecords.decodeMessage(value) else {
                cleanup.delete(.retained, key: Array(key))
                return
            }
            var kept = publish
            kept.retain = true
            // The topic from the stored PUBLISH: a long one's key is a digest.
            retained[publish.topicName] = Message(publish: kept, receivedAt: receivedAt)
        }
        try store.forEach(.sessions) { key, value in
            guard let separator = key.firstIndex(of: 0), separator + 1 < key.count else {
                cleanup.delete(.sessions, key: Array(key))
                return
            }
            let name = SessionName(unchecked: String(decoding: key[..<separator], as: UTF8.self))
            let kind = key[separator + 1]
            let suffix = UnsafeRawBufferPointer(rebasing: key[(separator + 2)...])
            let state: SessionState
            if let existing = sessions[name] {
                state = existing
            } else {
                state = SessionState(name: name, persistent: true)
                sessions[name] = state
            }
            switch kind {
            case BrokerRecords.subscriptionKind:
                // Under a digest key the filter is in the value, after its six bytes.
                let filter = value.count > 6
                    ? String(decoding: UnsafeRawBufferPointer(rebasing: value[6...]), as: UTF8.self)
                    : String(decoding: suffix, as: UTF8.self)
                guard TopicRules.checkFilter(filter) == nil,
                    let (options, identifier) = BrokerRecords.decodeSubscription(value)
                else {
                    cleanup.delete(.sessions, key: Array(key))
                    return
                }
                let subscriber = Subscriber(session: state, options: options, identifier: identifier)
                state.subscriptions[filter] = subscriber
                tree.insert(filter, subscriber)
            case BrokerRecords.deliveryKind:
                guard suffix.count == 8, let record = BrokerRecords.decodeDelivery(value),
                    let message = messages[record.messageKey]
                else {
                    cleanup.delete(.sessions, key: Array(key))
                    return
                }
                let sequence = UInt64(bigEndian: suffix.loadUnaligned(as: UInt64.self))
                highest = max(highest, sequence)
                let delivery = OutboundMessage(
                    sequence: sequence, message: message, qos: record.qos, retain: record.retain,
                    identifiers: record.identifiers, share: record.share)
                delivery.stored = true
                // The record is written before the PUBLISH goes out, so its sent flag may lag:
                // anything in flight may have reached the client, and goes again with DUP.
                delivery.sent = record.sent || record.state != .queued
                message.references += 1
                if record.state == .queued || record.packetIdentifier == 0
                    || state.inflight[record.packetIdentifier] != nil
                {
                    delivery.sent = false
                    state.appendQueued(delivery)
                    if message.expiresAt != nil { state.queueMayExpire = true }
                } else {
                    delivery.state = record.state
                    delivery.packetIdentifier = record.packetIdentifier
                    state.inflight[record.packetIdentifier] = delivery
                    if record.packetIdentifier >= state.nextPacketIdentifier {
                        state.nextPacketIdentifier = record.packetIdentifier == .max ? 1 : record.packetIdentifier + 1
                    }
                }
            case BrokerRecords.willKind:
                guard suffix.isEmpty, let (will, due, delay) = BrokerRecords.decodeWill(value) else {
                    cleanup.delete(.sessions, key: Array(key))
                    return
                }
                // Due 0: the broker stopped while its connection was up, an unclean end.
                if due == 0, case .publishOnlyFor(let ours) = storedWills, !ours.contains(state.name) {
                    // Another node recorded the session as lost and sends its will (or not,
                    // when it was resumed within the delay): not again from here.
                    cleanup.delete(.sessions, key: Array(key))
                    return
                }
                state.willStored = true
                loadedWills.append((state, will, due == 0 ? now + Int64(delay) * 1_000_000 : due))
            case BrokerRecords.inboundKind:
                guard suffix.count == 2 else {
                    cleanup.delete(.sessions, key: Array(key))
                    return
                }
                state.inboundQoS2.insert(UInt16(bigEndian: suffix.loadUnaligned(as: UInt16.self)))
            default:
                cleanup.delete(.sessions, key: Array(key))
            }
        }
        for message in messages.values where message.references == 0 {
            cleanup.delete(.messages, key: BrokerRecords.messageKey(message.storeKey))
            message.storeKey = 0
        }
        sequence = highest
        for (state, will, due) in loadedWills {
            // A connection that was up at the stop gets its due time written (and keeps it
            // across further restarts).
            if let bytes = BrokerRecords.encodeWill(will, due: due, delay: will.properties.willDelayInterval ?? 0) {
                cleanup.put(.sessions, key: BrokerRecords.willKey(state.prefix), value: bytes)
            }
            schedule(will, state, due: due)
        }
        try commitBlocking(cleanup)
    }
}
