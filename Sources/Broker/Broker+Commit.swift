// Handing writes to the store, in the order the broker decided them, and acting on their commit.
import Foundation
import LMDBStorage

extension Broker {
    /// Writes that promise nothing to anyone: submitted in order, not waited for.
    func submit(_ batch: StoreBatch) {
        guard let store, !batch.isEmpty, !closed else { return }
        store.submit(batch.operations)
    }

    /// Submits `batch` (under the lock, so the store sees it in the broker's order) and
    /// returns what to wait on; nil when there is nothing to write. Its held deliveries are
    /// sent once the commit is known (also when it failed: the message is then held in
    /// memory only, and the publisher, which gets no acknowledgement, will send it again).
    func submitWaiting(_ batch: StoreBatch) -> CommitWaiter? {
        guard let store, !batch.isEmpty else { return nil }
        let waiter = CommitWaiter()
        let held = batch.heldUntilCommit
        guard !closed else {
            releaseAfterCommit(held)
            waiter.complete(.failure(.closed))
            return waiter
        }
        store.submit(batch.operations) { [self] result in
            if !held.isEmpty { locked { releaseAfterCommit(held) } }
            waiter.complete(result)
        }
        return waiter
    }

    /// Deliveries whose records are now durable: those in flight and not sent yet go out.
    func releaseAfterCommit(_ held: [(session: SessionState, delivery: OutboundMessage)]) {
        let now = clock()
        var batch = StoreBatch()
        for (session, delivery) in held {
            delivery.durable = true
            guard delivery.state != .queued, !delivery.sent, session.sink != nil,
                session.inflight[delivery.packetIdentifier] === delivery
            else { continue }
            if let packet = transmit(delivery, session, now: now, &batch) {
                post(session, packet)
            } else {
                pump(session, &batch)
            }
        }
        submit(batch)
    }

    /// Init is synchronous (it loads the store before the broker is used), so the cleanup
    /// commit it makes is waited for by blocking the calling thread.
    func commitBlocking(_ batch: StoreBatch) throws {
        guard let store, !batch.isEmpty else { return }
        let semaphore = DispatchSemaphore(value: 0)
        let outcome = CommitOutcome()
        store.submit(batch.operations) { result in
            outcome.set(result)
            semaphore.signal()
        }
        semaphore.wait()
        try outcome.get()
    }
}
