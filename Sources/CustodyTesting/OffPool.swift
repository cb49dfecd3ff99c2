import Foundation

/// Runs blocking test code (sockets read with timeouts, child processes waited for, sleeps)
/// on a thread of its own. Swift concurrency has one thread per core; a test that blocks
/// them starves every other test's tasks meanwhile (the in-process fronts' broker tasks, the
/// event loops' continuations), which then time out on a loaded machine.
///
/// The body stays in the calling task (a task-executor preference, not a new thread of
/// control), so `#expect` inside it is still the test's own: on a bare `Thread` a failed
/// expectation is attributed to no test and the test passes.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let executor = ThreadExecutor()
    defer { executor.stop() }
    return try await withTaskExecutorPreference(executor) { @Sendable () async throws -> T in
        try body()
    }
}

/// A task executor of one thread, for one `offPool` call.
private final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopped = false

    init() {
        let thread = Thread { [self] in run() }
        thread.name = "custody-test-blocking"
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopped { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
