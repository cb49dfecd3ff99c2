#if os(Linux)
import NIOCore

/// Work scheduled through NIO's API on an `EpollEventLoop` (`scheduleTask`,
/// `scheduleCallback`), from any thread. It is its own handle: scheduled from another thread
/// it joins the loop's timers only when the loop gets to it, and a cancel that the loop
/// runs before that must still hold.
class ScheduledWork: EpollTimerHandler, @unchecked Sendable {
    // Touched on the loop only.
    private var timer: EpollTimerID?
    private var finished = false

    final func insert(on loop: EpollEventLoop, at deadline: NIODeadline) {
        guard !finished else { return }
        timer = loop.scheduleTimer(self, at: deadline)
    }

    final func cancel(on loop: EpollEventLoop) {
        guard !finished else { return }
        finished = true
        if let timer { loop.cancelTimer(timer) }
        cancelled(on: loop)
    }

    final func timerFired(on loop: EpollEventLoop) {
        finished = true
        run(on: loop)
    }

    final func timerAbandoned(on loop: EpollEventLoop) {
        finished = true
        abandoned(on: loop)
    }

    func run(on loop: EpollEventLoop) {}
    func cancelled(on loop: EpollEventLoop) {}
    func abandoned(on loop: EpollEventLoop) {}
}

/// A `scheduleTask`: its result completes the promise; cancelled or abandoned, the promise fails.
final class ScheduledTask<T>: ScheduledWork, @unchecked Sendable {
    private let promise: EventLoopPromise<T>
    private let task: () throws -> T

    init(_ promise: EventLoopPromise<T>, _ task: @escaping () throws -> T) {
        self.promise = promise
        self.task = task
    }

    override func run(on loop: EpollEventLoop) {
        // Timers run on the loop: the result need not be Sendable.
        do { promise.assumeIsolated().succeed(try task()) } catch { promise.fail(error) }
    }

    override func cancelled(on loop: EpollEventLoop) { promise.fail(EventLoopError.cancelled) }
    override func abandoned(on loop: EpollEventLoop) { promise.fail(EventLoopError.shutdown) }
}

/// A `scheduleCallback`: the handler hears either of its deadline or of its cancellation
/// (also when the loop stops first).
final class ScheduledCallback<Handler: NIOScheduledCallbackHandler & Sendable>: ScheduledWork, @unchecked Sendable {
    private let handler: Handler
    let id: UInt64

    init(_ handler: Handler, id: UInt64) {
        self.handler = handler
        self.id = id
    }

    override func run(on loop: EpollEventLoop) {
        loop.forgetCallback(id)
        handler.handleScheduledCallback(eventLoop: loop)
    }

    override func cancelled(on loop: EpollEventLoop) { handler.didCancelScheduledCallback(eventLoop: loop) }
    override func abandoned(on loop: EpollEventLoop) { handler.didCancelScheduledCallback(eventLoop: loop) }
}
#endif
