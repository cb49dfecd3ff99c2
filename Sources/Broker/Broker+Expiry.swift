// Message Expiry: queued messages and retained ones whose interval has passed go.
import LMDBStorage

extension Broker {
    /// Drops every queued message whose Message Expiry Interval has passed (in memory and in
    /// the store: MQTT-3.3.2-5), and expired retained messages. Returns how many queued
    /// messages went. Messages in flight are not touched: their delivery has begun.
    @discardableResult
    public func sweepExpired() -> Int {
        locked { sweepExpiredLocked(now: clock()) }
    }

    @discardableResult
    func sweepExpiredLocked(now: Int64) -> Int {
        var batch = StoreBatch()
        var count = 0
        // Only queues that took a message with an expiry since they were last found clean.
        for state in sessions.values where state.queueMayExpire {
            let gone = state.removeQueued { isExpired($0, now: now) }
            guard !gone.isEmpty else { continue }
            for delivery in gone {
                forget(delivery, state, &batch, deleteRecord: true)
                state.expired += 1
                droppedExpired += 1
                count += 1
            }
            state.queueMayExpire = state.queue.contains { $0.message.expiresAt != nil }
        }
        for (topic, message) in retained where isExpired(message, now: now) {
            retained[topic] = nil
            if store != nil { batch.delete(.retained, key: BrokerRecords.retainedKey(topic)) }
        }
        submit(batch)
        return count
    }

    func isExpired(_ delivery: OutboundMessage, now: Int64) -> Bool {
        isExpired(delivery.message, now: now)
    }

    func isExpired(_ message: Message, now: Int64) -> Bool {
        guard let expiresAt = message.expiresAt else { return false }
        return now >= expiresAt
    }
}
