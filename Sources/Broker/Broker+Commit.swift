// Handing writes to the store, in the order the broker decided them, and acting on their commit.
import Foundation
import LMDBStorage

extension Broker {
    /// Writes that promise nothing to anyone: submitted in order, not waited for. Nothing in
    /// them is put back if they fail: a batch with an undo log goes through `submitWaiting`.
    func submit(_ batch: StoreBatch) {
        assert(batch.undoLog.isEmpty, "a batch with changes to put back on failure was submitted unwaited")
        assert(batch.afterCommit.isEmpty, "a batch with a tap's writes was submitted unwaited")
        guard let store, !batch.isEmpty, !closed else { return }
        store.submit(batch.operations)
    }

    /// Submits `batch` (under the lock, so the store sees it in the broker's order) and
    /// returns what to wait on; nil when there is nothing to write and no tap to tell (a tap's
    /// capture without writes, a QoS 0 message's route event, still goes through the store's
    /// queue: it is told in commit order, after every earlier write). Its held deliveries are
    /// sent once the commit succeeded. When it failed, what the batch changed in memory is put
    /// back first (`undo`): the held deliveries leave their queues unsent (the publisher, which
    /// gets no acknowledgement, sends the message again), and the waiter hears of the failure
    /// only after that.
    func submitWaiting(_ batch: StoreBatch) -> CommitWaiter? {
        guard let store, !batch.isEmpty || !batch.afterCommit.isEmpty else { return nil }
        let waiter = CommitWaiter()
        let held = batch.heldUntilCommit
        let undoLog = batch.undoLog
        let afterCommit = batch.afterCommit
        guard !closed else {
            undo(undoLog)
            for told in afterCommit { told(false) }
            waiter.complete(.failure(.closed))
            return waiter
        }
        store.submit(batch.operations) { [self] result in
            switch result {
            case .success:
                if !held.isEmpty { locked { releaseAfterCommit(held) } }
            case .failure:
                if !undoLog.isEmpty { locked { undo(undoLog) } }
            }
            for told in afterCommit {
                if case .success = result { told(true) } else { told(false) }
            }
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
