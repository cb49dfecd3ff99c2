import Foundation

/// The one writer thread of an LMDB environment, with group commit: requests queue up while
/// a commit is in progress; when the thread is free it takes every waiting request and hands
/// them to `process` as one batch (one write transaction, one fsync). Write transactions
/// thus stay on one thread and never cross an `await`.
///
/// A batch without urgent requests (`isUrgent`: someone waits on the answer, e.g. a claim)
/// may be held up to `holdDelay` seconds for one to join it and share its fsync, unless it
/// already has `holdThreshold` requests.
final class GroupCommitThread<Request>: @unchecked Sendable {
    private enum RunState { case notStarted, running, stopping, stopped }

    private let name: String
    private let isUrgent: (Request) -> Bool
    private let process: ([Request]) -> Void
    /// Set before `start()`.
    var holdDelay: Double = 0
    var holdThreshold = 64
    /// Runs on the thread whenever it is about to wait (for requests, or holding a small
    /// batch) and before it stops: what a batch left to finish when no other batch follows at
    /// once (the ledger's deferred meta flush). Set before `start()`.
    var beforeWaiting: (() -> Void)?

    private let condition = NSCondition()
    private var queue: [Request] = []
    private var spare: [Request] = []
    /// Whether `queue` holds an urgent request (guarded by `condition`).
    private var queueIsUrgent = false
    /// The thread is holding a small batch, waiting for an urgent request to join it.
    private var holding = false
    /// The queue was empty when the thread last looked, and it has not taken a batch since:
    /// it is about to wait or waiting (`enqueueIfIdle`). Guarded by `condition`.
    private var idle = false
    private var state = RunState.notStarted
    private let finished = NSCondition()
    private var threadDone = false

    /// `name`: the thread's, for top, perf and gdb (at most 15 characters).
    init(name: String, isUrgent: @escaping (Request) -> Bool = { _ in true }, process: @escaping ([Request]) -> Void) {
        self.name = name
        self.isUrgent = isUrgent
        self.process = process
    }

    func start() {
        condition.lock()
        precondition(state == .notStarted)
        state = .running
        condition.unlock()
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Queues `request` for the next batch; false (nothing queued) unless running.
    func enqueue(_ request: Request) -> Bool {
        condition.lock()
        guard state == .running else {
            condition.unlock()
            return false
        }
        queue.append(request)
        let urgent = isUrgent(request)
        if urgent { queueIsUrgent = true }
        if queue.count == 1 || (holding && (urgent || queue.count >= holdThreshold)) {
            condition.signal()
        }
        condition.unlock()
        return true
    }

    /// Queues `requests` in order, in one turn of the lock; false (nothing queued) unless running.
    func enqueue(contentsOf requests: [Request]) -> Bool {
        enqueue(requests, onlyIfIdle: false)
    }

    /// Queues `requests` only when the thread is idle (`idle`: nothing queued, no batch in
    /// hand); false otherwise, or unless running. A caller that keeps requests back while the
    /// thread is busy, and hands them over in `beforeWaiting`, uses it so that nothing it
    /// keeps back waits for a thread that is already asleep.
    func enqueueIfIdle(contentsOf requests: [Request]) -> Bool {
        enqueue(requests, onlyIfIdle: true)
    }

    private func enqueue(_ requests: [Request], onlyIfIdle: Bool) -> Bool {
        condition.lock()
        guard state == .running, idle || !onlyIfIdle else {
            condition.unlock()
            return false
        }
        let wasEmpty = queue.isEmpty
        queue += requests
        if requests.contains(where: isUrgent) { queueIsUrgent = true }
        if wasEmpty || (holding && (queueIsUrgent || queue.count >= holdThreshold)) {
            condition.signal()
        }
        condition.unlock()
        return true
    }

    /// Processes every request already queued, then stops the thread; later requests are
    /// refused. Returns once the thread is done; true when this call stopped it.
    @discardableResult
    func stop() -> Bool {
        condition.lock()
        let wasRunning = state == .running
        if state == .running { state = .stopping } else if state == .notStarted { state = .stopped }
        condition.signal()
        condition.unlock()
        guard wasRunning else { return false }
        finished.lock()
        while !threadDone { finished.wait() }
        finished.unlock()
        return true
    }

    var isRunning: Bool {
        condition.lock()
        defer { condition.unlock() }
        return state == .running
    }

    /// Whether the thread would wait now rather than take the queue (guarded by `condition`).
    private var wouldWait: Bool {
        queue.isEmpty || (!queueIsUrgent && holdDelay > 0 && queue.count < holdThreshold && state == .running)
    }

    private func run() {
        while true {
            condition.lock()
            if queue.isEmpty { idle = true }
            if let beforeWaiting, wouldWait {
                condition.unlock()
                beforeWaiting()
                condition.lock()
            }
            while queue.isEmpty && state == .running { condition.wait() }
            if queue.isEmpty {
                state = .stopped
                condition.unlock()
                break
            }
            if !queueIsUrgent && holdDelay > 0 && queue.count < holdThreshold {
                let deadline = Date(timeIntervalSinceNow: holdDelay)
                holding = true
                while !queueIsUrgent && state == .running && queue.count < holdThreshold
                    && condition.wait(until: deadline)
                {}
                holding = false
            }
            var batch = spare
            swap(&batch, &queue)
            queueIsUrgent = false
            idle = false
            condition.unlock()

            process(batch)

            batch.removeAll(keepingCapacity: true)
            spare = batch
        }
        finished.lock()
        threadDone = true
        finished.signal()
        finished.unlock()
    }
}
