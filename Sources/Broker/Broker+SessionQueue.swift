// A session's outbound side: its queue, its in-flight window, and the PUBLISH each delivery becomes.
import LMDBStorage
import MQTTCodec

extension Broker {
    /// Puts a delivery in flight (its PUBLISH appended to `packets` when it may go now) or
    /// in the queue.
    func enqueue(
        _ delivery: Delivery, _ session: SessionState, _ ops: inout [BrokerStoreOperation],
        into packets: inout [MQTTPacket]
    ) {
        if session.sink != nil, session.queue.isEmpty, session.inflight.count < session.window {
            assignIdentifier(delivery, session)
            if delivery.stored { ops.append(putRecord(delivery, session)) }
            if delivery.durable, let packet = transmit(delivery, session, now: clock(), &ops) {
                packets.append(packet)
            }
            return
        }
        if session.queue.count >= offlineQueueLimit {
            let oldest = session.queue.removeFirst()
            release(oldest, session, &ops, deleteRecord: true)
            session.dropped += 1
            droppedTotal += 1
        }
        session.queue.append(delivery)
        if delivery.message.expiresAt != nil { session.queueMayExpire = true }
        if delivery.stored { ops.append(putRecord(delivery, session)) }
    }

    func assignIdentifier(_ delivery: Delivery, _ session: SessionState) {
        var id = session.nextPacketIdentifier
        while session.inflight[id] != nil { id = id == .max ? 1 : id + 1 }
        session.nextPacketIdentifier = id == .max ? 1 : id + 1
        delivery.packetIdentifier = id
        delivery.state = delivery.qos == .atLeastOnce ? .awaitingAck : .awaitingRec
        session.inflight[id] = delivery
    }

    /// Fills the in-flight window from the queue and sends what is durable.
    func pump(_ session: SessionState, _ ops: inout [BrokerStoreOperation]) {
        guard session.sink != nil, !session.queue.isEmpty else { return }
        var packets: [MQTTPacket] = []
        let now = clock()
        while session.inflight.count < session.window, let delivery = session.queue.first {
            session.queue.removeFirst()
            if isExpired(delivery, now: now) {
                release(delivery, session, &ops, deleteRecord: true)
                session.expired += 1
                expiredTotal += 1
                continue
            }
            assignIdentifier(delivery, session)
            if delivery.stored { ops.append(putRecord(delivery, session)) }
            if delivery.durable, let packet = transmit(delivery, session, now: now, &ops) {
                packets.append(packet)
            }
        }
        post(session, packets)
    }

    func putRecord(_ delivery: Delivery, _ session: SessionState) -> BrokerStoreOperation {
        .put(.sessions, key: BrokerRecords.deliveryKey(session.prefix, delivery.sequence),
             value: BrokerRecords.encodeDelivery(delivery))
    }

    func outbound(_ delivery: Delivery, _ session: SessionState, now: Int64) -> MQTTPublish {
        var packet = delivery.message.publish
        packet.qos = delivery.qos
        packet.packetIdentifier = delivery.qos == .atMostOnce ? nil : delivery.packetIdentifier
        packet.duplicate = delivery.sent
        packet.retain = delivery.retain
        if session.version == .mqtt5 {
            if !delivery.identifiers.isEmpty { packet.properties.subscriptionIdentifiers = delivery.identifiers }
            if let interval = packet.properties.messageExpiryInterval {
                let waited = max(0, (now - delivery.message.receivedAt) / 1_000_000)
                packet.properties.messageExpiryInterval = UInt32(max(0, Int64(interval) - waited))
            }
        }
        return packet
    }

    /// The PUBLISH for an in-flight delivery, marked sent; nil when it exceeds the client's
    /// Maximum Packet Size, in which case the delivery is over (and its slot free).
    func transmit(
        _ delivery: Delivery, _ session: SessionState, now: Int64, _ ops: inout [BrokerStoreOperation]
    ) -> MQTTPacket? {
        let packet = MQTTPacket.publish(outbound(delivery, session, now: now))
        if let maximum = session.maximumPacketSize {
            let size = (try? MQTTEncoder(protocolVersion: session.version).encodedSize(of: packet)) ?? Int.max
            if size > maximum {
                session.inflight[delivery.packetIdentifier] = nil
                release(delivery, session, &ops, deleteRecord: true)
                session.discarded += 1
                discardedTotal += 1
                return nil
            }
        }
        delivery.sent = true
        return packet
    }
}
