// A store commit that failed: what its decision changed in memory goes back as it was.
import LMDBStorage

extension Broker {
    /// Under the lock, newest change first. Each change is put back only if nothing decided
    /// since has changed the same thing again (the session ended, the filter was subscribed
    /// anew, the delivery was dropped, or resent after a takeover): later decisions stand.
    ///
    /// What is put back matches the store as the failed commit left it; the few writes that
    /// make the store match memory again (a delivery record a later commit may have written,
    /// the stored copy of a message other deliveries still need) are submitted, unwaited.
    func undo(_ log: [StoreBatch.Undo]) {
        var repair = StoreBatch()
        var refill: [SessionState] = []
        var shared: [ObjectIdentifier: Message] = [:]
        for entry in log.reversed() {
            switch entry {
            case .held(let session, let delivery):
                // Still waiting for this very commit: stored, never durable, never sent.
                guard delivery.stored, !delivery.durable, !delivery.sent else { continue }
                if delivery.state != .queued, session.inflight[delivery.packetIdentifier] === delivery {
                    session.inflight[delivery.packetIdentifier] = nil
                } else if session.removeQueued(where: { $0 === delivery }).isEmpty {
                    continue
                }
                delivery.stored = false
                // A later commit may have written its record (put in flight by `pump`).
                repair.delete(.sessions, key: BrokerRecords.deliveryKey(session.prefix, delivery.sequence))
                let message = delivery.message
                message.references -= 1
                if message.references == 0 { message.storeKey = 0 }
                shared[ObjectIdentifier(message)] = message
                refill.append(session)
            case .dropped(let session, let delivery, let storeKey):
                // Its drop was not written: the store still holds it, so the queue does again.
                guard sessions[session.name] === session, session.persistent, !delivery.stored else { continue }
                delivery.stored = true
                delivery.message.references += 1
                if delivery.message.storeKey == 0 { delivery.message.storeKey = storeKey }
                session.prependQueued(delivery)
                if session.sink != nil { noteBacklog(session) }
                session.dropped -= 1
                droppedQueueFull -= 1
                refill.append(session)
            case .subscribed(let session, let filter, let added, let previous):
                guard let current = session.subscriptions[filter], current.stamp == added.stamp else { continue }
                if let previous {
                    session.subscriptions[filter] = previous
                    tree.insert(filter, previous)
                } else {
                    session.subscriptions[filter] = nil
                    _ = tree.remove(filter, session: session)
                }
            case .unsubscribed(let session, let filter, let removed):
                guard sessions[session.name] === session, session.subscriptions[filter] == nil else { continue }
                session.subscriptions[filter] = removed
                tree.insert(filter, removed)
            case .retained(let topic, let kept, let previous):
                guard retained[topic] === kept else { continue }
                retained[topic] = previous
            }
        }
        // Messages other deliveries still refer to: their stored copy may have been written by
        // the failed commit (a retained message a second SUBSCRIBE stored meanwhile).
        for message in shared.values where message.references > 0 && message.storeKey != 0 {
            guard let bytes = BrokerRecords.encodeMessage(message.publish, receivedAt: message.receivedAt) else { continue }
            repair.put(.messages, key: BrokerRecords.messageKey(message.storeKey), value: bytes)
        }
        for session in refill { pump(session, &repair) }
        submit(repair)
    }
}
