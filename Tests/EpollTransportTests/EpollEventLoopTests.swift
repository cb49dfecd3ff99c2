#if os(Linux)
import Glibc
import NIOCore
import Synchronization
import Testing

@testable import EpollTransport

// The epoll event loop on its own: tasks, NIO's scheduled work, its own timers, descriptors.

/// Values appended from any thread.
final class Recorder<Value: Sendable>: Sendable {
    private let values = Mutex<[Value]>([])
    func append(_ value: Value) { values.withLock { $0.append(value) } }
    var all: [Value] { values.withLock { $0 } }
}

private final class CountingHandler: NIOScheduledCallbackHandler, Sendable {
    let fired = Atomic<Int>(0)
    let cancelled = Atomic<Int>(0)
    func handleScheduledCallback(eventLoop: some EventLoop) { fired.add(1, ordering: .relaxed) }
    func didCancelScheduledCallback(eventLoop: some EventLoop) { cancelled.add(1, ordering: .relaxed) }
}

/// A timer handler that records its number when it fires.
private final class NumberedTimer: EpollTimerHandler, @unchecked Sendable {
    let number: Int
    let fired: Recorder<Int>
    init(_ number: Int, _ fired: Recorder<Int>) {
        self.number = number
        self.fired = fired
    }
    func timerFired(on loop: EpollEventLoop) { fired.append(number) }
}

@Suite("Epoll event loop")
struct EpollEventLoopTests {
    @Test func tasksRunOnTheLoopInOrder() async throws {
        let loop = try EpollEventLoop(name: "test-tasks")
        #expect(!loop.inEventLoop)
        let order = Recorder<Int>()
        let done = (0..<200).map { index in
            loop.submit {
                precondition(loop.inEventLoop)
                order.append(index)
            }
        }
        try await EventLoopFuture.andAllSucceed(done, on: loop).get()
        #expect(order.all == Array(0..<200))
        // A task a task queues runs too (the loop does not sleep on it).
        let nested = try await loop.flatSubmit { loop.submit { 42 } }.get()
        #expect(nested == 42)
        try await loop.shutdownGracefully()
    }

    @Test func timersFireInDeadlineOrderAndCancelledOnesDoNot() async throws {
        let loop = try EpollEventLoop(name: "test-timers")
        let fired = Recorder<Int>()
        let start = NIODeadline.now()
        let late = loop.scheduleTask(deadline: start + .milliseconds(80)) { fired.append(3) }
        let early = loop.scheduleTask(deadline: start + .milliseconds(20)) { fired.append(1) }
        let cancelled = loop.scheduleTask(deadline: start + .milliseconds(50)) { fired.append(2) }
        cancelled.cancel()
        try await early.futureResult.get()
        try await late.futureResult.get()
        await #expect(throws: EventLoopError.self) { try await cancelled.futureResult.get() }
        #expect(fired.all == [1, 3])
        #expect(NIODeadline.now() >= start + .milliseconds(80))
        try await loop.shutdownGracefully()
    }

    @Test func scheduledCallbacksFireOrHearOfTheirCancellation() async throws {
        let loop = try EpollEventLoop(name: "test-callbacks")
        let kept = CountingHandler()
        let dropped = CountingHandler()
        try await loop.submit {
            _ = try loop.scheduleCallback(in: .milliseconds(10), handler: kept)
            try loop.scheduleCallback(in: .milliseconds(10), handler: dropped).cancel()
        }.get()
        // From another thread: scheduled and cancelled through the loop's queue, in order.
        let fromOutside = CountingHandler()
        try loop.scheduleCallback(in: .seconds(30), handler: fromOutside).cancel()
        // Pending at shutdown: cancelled then; a pending task's future fails.
        let pending = CountingHandler()
        _ = try loop.scheduleCallback(in: .seconds(30), handler: pending)
        let pendingTask = loop.scheduleTask(in: .seconds(30)) { 1 }
        // Heard now: a stopped loop runs nothing more, so its futures cannot be awaited after.
        let taskOutcome = Recorder<String>()
        pendingTask.futureResult.whenComplete { result in taskOutcome.append("\(result)") }
        try await Task.sleep(for: .milliseconds(150))
        #expect(kept.fired.load(ordering: .relaxed) == 1)
        #expect(kept.cancelled.load(ordering: .relaxed) == 0)
        #expect(dropped.fired.load(ordering: .relaxed) == 0)
        #expect(dropped.cancelled.load(ordering: .relaxed) == 1)
        #expect(fromOutside.cancelled.load(ordering: .relaxed) == 1)
        try await loop.shutdownGracefully()
        #expect(pending.cancelled.load(ordering: .relaxed) == 1)
        #expect(pending.fired.load(ordering: .relaxed) == 0)
        #expect(taskOutcome.all.count == 1)
        #expect(taskOutcome.all.first?.contains("shutdown") == true)
        // A second shutdown answers at once.
        try await loop.shutdownGracefully()
    }

    @Test func ownTimersFireInDeadlineOrderAndCancelledOnesDoNot() async throws {
        let loop = try EpollEventLoop(name: "test-own-timers")
        let fired = Recorder<Int>()
        try await loop.submit {
            let start = NIODeadline.now()
            var timers: [EpollTimerID] = []
            for number in 0..<200 {
                // Equal deadlines in pairs: they fire in the order they were set.
                timers.append(loop.scheduleTimer(NumberedTimer(number, fired), at: start + .milliseconds(Int64(number / 2))))
            }
            for number in stride(from: 1, to: 200, by: 3) { loop.cancelTimer(timers[number]) }
            // An id that was cancelled already, or fired, cancels nothing else.
            loop.cancelTimer(timers[1])
        }.get()
        try await Task.sleep(for: .milliseconds(300))
        #expect(fired.all == (0..<200).filter { $0 % 3 != 1 })
        try await loop.shutdownGracefully()
    }

    @Test func timerQueueAgreesWithASortedList() {
        var queue = TimerQueue()
        var generator = SystemRandomNumberGenerator()
        let fired = Recorder<Int>()
        var live: [(deadline: UInt64, number: Int, id: EpollTimerID)] = []
        for number in 0..<3_000 {
            let deadline = UInt64.random(in: 0...1_000, using: &generator)
            live.append((deadline, number, queue.schedule(NumberedTimer(number, fired), at: deadline)))
            // Cancel about two in three, so that the heap is compacted many times.
            if Bool.random(using: &generator) || Bool.random(using: &generator), !live.isEmpty {
                let victim = live.remove(at: Int.random(in: 0..<live.count, using: &generator))
                #expect(queue.cancel(victim.id) != nil)
                #expect(queue.cancel(victim.id) == nil)
            }
        }
        var popped: [Int] = []
        while let handler = queue.popDue(now: .max) { popped.append((handler as! NumberedTimer).number) }
        let expected = live.sorted { ($0.deadline, $0.number) < ($1.deadline, $1.number) }.map(\.number)
        #expect(popped == expected)
        #expect(queue.isEmpty)
    }
}

#endif
