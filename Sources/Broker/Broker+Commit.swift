// Handing writes to the store, in the order the broker decided them, and acting on their commit.
import LMDBStorage

extension Broker {
    func submit(_ ops: [BrokerStoreOperation]) {
        guard let store, !ops.isEmpty, !closed else { return }
        store.submit(ops)
    }

    /// Submits `ops` (under the lock, so the store sees them in the broker's order) and
    /// returns what to wait on; nil when there is nothing to write. `pending` deliveries are
    /// sent once the commit is known (also when it failed: the message is then held in
    /// memory only, and the publisher, which gets no acknowledgement, will send it again).
    func submitWaiting(_ ops: [BrokerStoreOperation], _ pending: [(SessionState, Delivery)] = []) -> CommitWaiter? {
        guard let store, !ops.isEmpty else { return nil }
        let waiter = CommitWaiter()
        guard !closed else {
            release(pending)
            waiter.complete(.failure(.closed))
            return waiter
        }
        store.submit(ops) { [self] result in
            if !pending.isEmpty { locked { release(pending) } }
            waiter.complete(result)
        }
        return waiter
    }

    func release(_ pending: [(SessionState, Delivery)]) {
        let now = clock()
        var ops: [BrokerStoreOperation] = []
        for (session, delivery) in pending {
            delivery.durable = true
            guard delivery.state != .queued, !delivery.sent, session.sink != nil,
                session.inflight[delivery.packetIdentifier] === delivery
            else { continue }
            if let packet = transmit(delivery, session, now: now, &ops) {
                post(session, packet)
            } else {
                pump(session, &ops)
            }
        }
        submit(ops)
    }
}
