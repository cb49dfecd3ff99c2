// A session's outbound side: its queue, its in-flight window, and the PUBLISH each delivery becomes.
import LMDBStorage
import MQTTCodec

extension Broker {
    /// Puts a delivery in flight or in the queue. Returns its PUBLISH when it may go now; the
    /// caller decides how (posted to the sink, or returned after a SUBACK). A delivery the
    /// queue limits keep out (`makeRoom`) is forgotten, its stored copy with it.
    func enqueue(_ delivery: OutboundMessage, _ session: SessionState, _ batch: inout StoreBatch) -> MQTTPacket? {
        if session.sink != nil, session.queue.isEmpty, session.inflight.count < session.window, !session.overflowed {
            assignIdentifier(delivery, session)
            if delivery.stored { putRecord(delivery, session, &batch) }
            guard delivery.durable else { return nil }
            return transmit(delivery, session, now: clock(), &batch)
        }
        guard makeRoom(for: delivery, in: session, &batch) else {
            forget(delivery, session, &batch, deleteRecord: false)
            return nil
        }
        session.appendQueued(delivery)
        if session.queue.count == 1, session.sink != nil { noteBacklog(session) }
        if delivery.message.expiresAt != nil { session.queueMayExpire = true }
        if delivery.stored { putRecord(delivery, session, &batch) }
        return nil
    }

    func assignIdentifier(_ delivery: OutboundMessage, _ session: SessionState) {
        var id = session.nextPacketIdentifier
        while session.inflight[id] != nil { id = id == .max ? 1 : id + 1 }
        session.nextPacketIdentifier = id == .max ? 1 : id + 1
        delivery.packetIdentifier = id
        delivery.state = delivery.qos == .atLeastOnce ? .awaitingAck : .awaitingRec
        session.inflight[id] = delivery
    }

    /// Fills the in-flight window from the queue and sends what is durable.
    func pump(_ session: SessionState, _ batch: inout StoreBatch) {
        guard session.sink != nil, !session.queue.isEmpty else { return }
        var packets: [MQTTPacket] = []
        let now = clock()
        while session.inflight.count < session.window, !session.queue.isEmpty {
            let delivery = session.removeFirstQueued()
            if isExpired(delivery, now: now) {
                forget(delivery, session, &batch, deleteRecord: true)
                session.expired += 1
                droppedExpired += 1
                continue
            }
            assignIdentifier(delivery, session)
            session.dequeued &+= 1
            if delivery.stored {
                // A QoS 1 record is not rewritten here: one write fewer per queued delivery.
                // If the broker stops before the PUBACK, the delivery goes again after the
                // restart with a new packet identifier, as it did whenever this unwaited rewrite
                // was lost in a crash; a clean stop writes it (`writeStaleRecords`), so the
                // restart resends it with DUP and the identifier the client knows. QoS 2's
                // identifier must survive (the receiver's PUBREC/PUBCOMP flow keys on it).
                if delivery.qos == .atLeastOnce {
                    delivery.recordStale = true
                } else {
                    putRecord(delivery, session, &batch)
                }
            }
            if delivery.durable, let packet = transmit(delivery, session, now: now, &batch) {
                packets.append(packet)
            }
        }
        post(session, packets)
    }

    /// For a persistent session: the message is written once (every session it goes to
    /// shares the stored copy), the delivery counts as a reference to it, and the delivery is
    /// held until `batch` is committed. Not stored when the message cannot be encoded: the
    /// delivery is then memory-only, as for a non-persistent session.
    func storeAndHold(_ delivery: OutboundMessage, for session: SessionState, _ batch: inout StoreBatch) {
        guard storeMessage(delivery.message, &batch) else { return }
        delivery.message.references += 1
        delivery.stored = true
        delivery.durable = false
        batch.hold(delivery, for: session)
    }

    /// Writes the message's stored copy unless it has one; false when it cannot be encoded.
    func storeMessage(_ message: Message, _ batch: inout StoreBatch) -> Bool {
        guard message.storeKey == 0 else { return true }
        guard let bytes = BrokerRecords.encodeMessage(message.publish, receivedAt: message.receivedAt) else { return false }
        sequence += 1
        message.storeKey = sequence
        batch.putNumbered(.messages, prefix: [], number: sequence, value: bytes)
        return true
    }

    /// The inverse of `storeAndHold`: the delivery's record goes (unless the caller deletes
    /// the session's whole prefix), and with the last reference the message's stored copy.
    func forget(
        _ delivery: OutboundMessage, _ session: SessionState, _ batch: inout StoreBatch, deleteRecord: Bool
    ) {
        guard delivery.stored else { return }
        delivery.stored = false
        if deleteRecord {
            batch.deleteNumbered(.sessions, prefix: session.deliveryPrefix, number: delivery.sequence)
        }
        let message = delivery.message
        message.references -= 1
        if message.references == 0, message.storeKey != 0 {
            batch.deleteNumbered(.messages, prefix: [], number: message.storeKey)
            message.storeKey = 0
        }
    }

    func putRecord(_ delivery: OutboundMessage, _ session: SessionState, _ batch: inout StoreBatch) {
        delivery.recordStale = false
        batch.putNumbered(
            .sessions, prefix: session.deliveryPrefix, number: delivery.sequence,
            value: BrokerRecords.encodeDelivery(delivery))
    }

    func publishPacket(for delivery: OutboundMessage, _ session: SessionState, now: Int64) -> MQTTPublish {
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
        _ delivery: OutboundMessage, _ session: SessionState, now: Int64, _ batch: inout StoreBatch
    ) -> MQTTPacket? {
        let packet = MQTTPacket.publish(publishPacket(for: delivery, session, now: now))
        if let maximum = session.maximumPacketSize {
            let size = (try? MQTTEncoder(protocolVersion: session.version).encodedSize(of: packet)) ?? Int.max
            if size > maximum {
                session.inflight[delivery.packetIdentifier] = nil
                forget(delivery, session, &batch, deleteRecord: true)
                session.discarded += 1
                droppedTooLarge += 1
                return nil
            }
        }
        delivery.sent = true
        return packet
    }

    /// The records `pump` left saying queued for deliveries now in flight (under the lock, at
    /// close): written, so that a clean restart resends them with their packet identifiers.
    func writeStaleRecords() {
        guard store != nil else { return }
        var batch = StoreBatch()
        for session in sessions.values where session.persistent {
            for delivery in session.inflight.values where delivery.stored && delivery.recordStale {
                putRecord(delivery, session, &batch)
            }
        }
        submit(batch)
    }
}
