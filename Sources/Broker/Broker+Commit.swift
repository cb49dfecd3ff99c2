// Handing writes to the store, in the order the broker decided them, and acting on their commit.
import Foundation
import LedgerCore
import LMDBStorage

extension Broker {
    /// Writes that promise nothing to anyone (a PUBACK's delete, a pumped delivery's record):
    /// kept back in `pendingWrites`, in order, and handed to the store ahead of the next
    /// submission that waits (in the broker's order, so in the same commit), or as soon as the
    /// store's writer is idle (`flushPendingWrites`, from its idle hook). Under load a window
    /// of acknowledgements then costs one submission, not one each, and joins the commit that
    /// was coming anyway. Batches that only delete are merged; one that adds stays a
    /// submission of its own, so that a store at its maximum still takes the deletes (it
    /// refuses whole submissions that add). Nothing in them is put back if they fail: a batch
    /// with an undo log goes through `submitWaiting`.
    func submit(_ batch: StoreBatch) {
        assert(batch.undoLog.isEmpty, "a batch with changes to put back on failure was submitted unwaited")
        assert(batch.afterCommit.isEmpty, "a batch with a tap's writes was submitted unwaited")
        guard let store, !batch.isEmpty, !closed else { return }
        let wasEmpty = pendingWrites.isEmpty
        let adds = batch.operations.contains(where: \.adds)
        if !adds, !wasEmpty, pendingTailOnlyDeletes {
            pendingWrites[pendingWrites.count - 1] += batch.operations
        } else {
            pendingWrites.append(batch.operations)
            pendingTailOnlyDeletes = !adds
        }
        pendingWriteCount += batch.operations.count
        if pendingWriteCount >= Self.mostPendingWrites {
            flushPendingWrites()
        } else if wasEmpty {
            // Said before the writer is asked: a writer found busy reads it (in its idle hook)
            // only after it has become idle, which the ask would have seen otherwise.
            writesPending.store(true, ordering: .releasing)
            // An idle writer would not look at `pendingWrites` again before the next commit.
            if store.submitIfIdle(pendingWrites) { clearPendingWrites() }
        }
    }

    /// The most writes kept back before they are handed over anyway.
    static let mostPendingWrites = 4096

    /// Hands the writes kept back to the store (under the lock): before a submission that
    /// is waited for, from the store's idle hook, and before the store closes.
    func flushPendingWrites() {
        guard let store, !pendingWrites.isEmpty else { return }
        store.submit(each: pendingWrites)
        clearPendingWrites()
    }

    private func clearPendingWrites() {
        pendingWrites.removeAll(keepingCapacity: true)
        pendingWriteCount = 0
        writesPending.store(false, ordering: .releasing)
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
        // What was kept back goes first, in the broker's order.
        flushPendingWrites()
        // Answered on the writer's thread after the commit, with every other submission of
        // that commit (`settleCommitted`): one turn of the broker's lock per commit, not one
        // per PUBLISH, so the writer and the loops hand the lock back and forth less.
        store.submit(batch.operations) { [self] result in
            committed.withLock {
                $0.append(Committed(held: held, undoLog: undoLog, afterCommit: afterCommit, waiter: waiter, result: result))
            }
        }
        return waiter
    }

    /// A waited submission whose commit is known, until `settleCommitted` acts on it.
    struct Committed {
        var held: [(session: SessionState, delivery: OutboundMessage)]
        var undoLog: [StoreBatch.Undo]
        var afterCommit: [@Sendable (Bool) -> Void]
        var waiter: CommitWaiter
        var result: Result<Void, LedgerError>
    }

    /// After the store answered a commit's submissions (its writer thread, `whenAnswered`):
    /// their held deliveries go out (or, if it failed, what they changed is put back), under
    /// the lock once for all of them and in submission order; then each tap capture hears of
    /// it and each waiter, in order, so a publisher's acknowledgement never overtakes the
    /// release of what it published.
    func settleCommitted() {
        let settled = committed.withLock { committed -> [Committed] in
            defer { committed.removeAll(keepingCapacity: true) }
            return committed
        }
        guard !settled.isEmpty else { return }
        if settled.contains(where: { $0.result.isSuccess ? !$0.held.isEmpty : !$0.undoLog.isEmpty }) {
            locked {
                for one in settled {
                    switch one.result {
                    case .success: if !one.held.isEmpty { releaseAfterCommit(one.held) }
                    case .failure: if !one.undoLog.isEmpty { undo(one.undoLog) }
                    }
                }
            }
        }
        for one in settled {
            for told in one.afterCommit { told(one.result.isSuccess) }
            one.waiter.complete(one.result)
        }
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
        flushPendingWrites()
        store.submit(batch.operations) { result in
            outcome.set(result)
            semaphore.signal()
        }
        semaphore.wait()
        try outcome.get()
    }
}
