// Limits (BrokerLimits): the checks, and what the observer is told of them after the lock.
import LedgerCore
import LMDBStorage
import MQTTCodec

/// Something for the `BrokerObserver`, decided under the lock and told after it.
enum BrokerNotice {
    case limit(BrokerLimit, SessionName, count: Int)
    case overflowed(SessionName)
}

extension Broker {
    /// Under the lock: `limit` refused or cut something of `session`. Notes of one limit and
    /// session in a row become one call (a publish dropping many messages from one queue).
    func note(_ limit: BrokerLimit, _ session: SessionName, count: Int = 1) {
        guard observer != nil, count > 0 else { return }
        if case .limit(let last, let name, let previous)? = notices.last, last == limit, name == session {
            notices[notices.count - 1] = .limit(limit, session, count: previous + count)
        } else {
            notices.append(.limit(limit, session, count: count))
        }
    }

    func takeNotices() -> [BrokerNotice] {
        guard !notices.isEmpty else { return [] }
        defer { notices.removeAll() }
        return notices
    }

    /// After the lock: the observer may call back into the broker.
    func tell(_ told: [BrokerNotice]) {
        guard let observer, !told.isEmpty else { return }
        for notice in told {
            switch notice {
            case .limit(let limit, let session, let count): observer.limitExceeded(limit, session: session, count: count)
            case .overflowed(let session): observer.queueOverflowed(session)
            }
        }
    }

    /// The limit a retained PUBLISH passes (nil: it may be kept). Deleting a retained message
    /// (empty payload) and replacing one are always allowed.
    func retainedRefusal(_ publish: MQTTPublish) -> BrokerLimit? {
        let size = publish.payload.readableBytes
        guard size > 0 else { return nil }
        if size > currentLimits.maxRetainedBytes { return .maxRetainedBytes }
        if retained.count >= currentLimits.maxRetainedMessages, retained[publish.topicName] == nil { return .maxRetainedMessages }
        return nil
    }

    /// Whether `delivery` may join `session`'s queue, within `queueMaxMessages` and
    /// `queueMaxBytes`: under `dropOldest` the oldest queued deliveries make room for it (one
    /// larger than a whole queue is itself the one dropped); under `endSession` a full queue
    /// takes nothing more and the session is reported once.
    func makeRoom(for delivery: OutboundMessage, in session: SessionState, _ batch: inout StoreBatch) -> Bool {
        if session.overflowed { return false }
        let size = delivery.message.payloadBytes
        let countFits = session.queue.count < currentLimits.queueMaxMessages
        guard !countFits || session.queuedBytes + size > currentLimits.queueMaxBytes else { return true }
        let limit: BrokerLimit = countFits ? .queueMaxBytes : .queueMaxMessages
        switch currentLimits.queueOverflow {
        case .endSession:
            session.overflowed = true
            note(limit, session.name)
            if observer != nil { notices.append(.overflowed(session.name)) }
            return false
        case .dropOldest:
            guard size <= currentLimits.queueMaxBytes else {
                session.dropped += 1
                droppedQueueFull += 1
                note(.queueMaxBytes, session.name)
                return false
            }
            var dropped = 0
            while !session.queue.isEmpty,
                session.queue.count >= currentLimits.queueMaxMessages || session.queuedBytes + size > currentLimits.queueMaxBytes
            {
                dropOldest(session, &batch)
                dropped += 1
            }
            note(limit, session.name, count: dropped)
            return true
        }
    }

    /// Drops the head of `session`'s queue, in memory and (through `batch`) in the store; a
    /// failed commit puts it back.
    func dropOldest(_ session: SessionState, _ batch: inout StoreBatch) {
        let oldest = session.removeFirstQueued()
        if oldest.stored { batch.undoOnFailure(.dropped(session, oldest, storeKey: oldest.message.storeKey)) }
        forget(oldest, session, &batch, deleteRecord: true)
        session.dropped += 1
        droppedQueueFull += 1
    }
}
