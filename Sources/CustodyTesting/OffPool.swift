import Foundation
import Synchronization

/// Runs blocking test code (sockets read with timeouts, child processes waited for, sleeps)
/// on a thread of its own. Swift concurrency has one thread per core; a test that blocks
/// them starves every other test's tasks meanwhile (the in-process fronts' broker tasks, the
/// event loops' continuations), which then time out on a loaded machine.
///
/// The body stays in the calling task (a task-executor preference, not a new thread of
/// control), so `#expect` inside it is still the test's own: on a bare `Thread` a failed
/// expectation is attributed to no test and the test passes.
///
/// At most `offPoolWidth` bodies run at once in the test process; the others wait for their
/// turn without holding a thread. Nearly every end-to-end test is such a body, and each
/// starts `custody` and clients of its own: run all at once, they would share two cores
/// among dozens of processes and miss their own time limits. A test that needs two blocking
/// parts at the same time (one reads what the other writes) asks for them together, with
/// `offPool(_:beside:)`, in one turn: with two calls, the first could hold a turn while the
/// second waits for one, and with every turn held so, no test would go on.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    await blockingTurns.enter()
    defer { blockingTurns.leave() }
    return try await onThreadOfItsOwn(body)
}

/// Two blocking parts of one test at the same time, each on a thread of its own, in one
/// turn of `offPool`; returns when both have ended. As with `async let`, an error of either
/// is thrown once both have ended.
public func offPool<A: Sendable, B: Sendable>(
    _ first: @escaping @Sendable () throws -> A, beside second: @escaping @Sendable () throws -> B
) async throws -> (A, B) {
    await blockingTurns.enter()
    defer { blockingTurns.leave() }
    async let a = onThreadOfItsOwn(first)
    let b = await Result { try await onThreadOfItsOwn(second) }
    return (try await a, try b.get())
}

/// How many `offPool` bodies may run at once: `CUSTODY_TEST_BLOCKING_WIDTH` if set, else
/// twice the cores (the bodies mostly wait for their processes and sockets).
public let offPoolWidth: Int = {
    if let text = ProcessInfo.processInfo.environment["CUSTODY_TEST_BLOCKING_WIDTH"], let width = Int(text), width > 0 {
        return width
    }
    return 2 * max(1, ProcessInfo.processInfo.activeProcessorCount)
}()

private let blockingTurns = Turns(offPoolWidth)

private func onThreadOfItsOwn<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    let executor = ThreadExecutor()
    defer { executor.stop() }
    return try await withTaskExecutorPreference(executor) { @Sendable () async throws -> T in
        try body()
    }
}

extension Result where Failure == any Error {
    fileprivate init(_ body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// A counting semaphore that suspends (rather than blocks) the tasks that wait, first come
/// first served.
private final class Turns: Sendable {
    private struct State {
        var free: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    init(_ width: Int) { state = Mutex(State(free: width)) }

    func enter() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state in
                if state.free > 0 {
                    state.free -= 1
                    return true
                }
                state.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    func leave() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiting.isEmpty else {
                state.free += 1
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
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
