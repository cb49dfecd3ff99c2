#if os(Linux)
import Dispatch
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

    /// A task scheduled from another thread joins the timers only when the loop gets to it; a
    /// cancel the loop runs before that still holds.
    @Test func aCancelThatComesBeforeTheTimerIsInsertedHolds() async throws {
        let loop = try EpollEventLoop(name: "test-lost-cancel")
        let fired = Recorder<Int>()
        let handle = Recorder<Scheduled<Void>>()
        let scheduled = DispatchSemaphore(value: 0)
        // The loop waits in this task while the timer is scheduled from here, so that the
        // timer's insertion is queued behind it: the cancel runs first.
        let cancelled = loop.submit {
            scheduled.wait()
            handle.all.first!.cancel()
        }
        let task = loop.scheduleTask(in: .milliseconds(20)) { fired.append(1) }
        handle.append(task)
        scheduled.signal()
        try await cancelled.get()
        await #expect(throws: EventLoopError.cancelled) { try await task.futureResult.get() }
        try await Task.sleep(for: .milliseconds(100))
        #expect(fired.all.isEmpty)
        try await loop.shutdownGracefully()
    }

    /// A connect storm cancels every timer long before its deadline: the dead entries do not
    /// stay in the heap until then.
    @Test func cancelledTimersDoNotPileUp() async throws {
        let loop = try EpollEventLoop(name: "test-dead-timers")
        let fired = Recorder<Int>()
        let entries = try await loop.submit { () -> Int in
            let held = (0..<100).map { loop.scheduleTimer(NumberedTimer($0, fired), at: .now() + .seconds(60)) }
            for cycle in 0..<100_000 {
                let timer = loop.scheduleTimer(NumberedTimer(cycle, fired), at: .now() + .seconds(60))
                loop.cancelTimer(timer)
            }
            _ = held
            return loop.timerEntryCount
        }.get()
        #expect(entries <= 300)
        #expect(fired.all.isEmpty)
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

    /// An event the loop took in for a descriptor that an earlier event of the same batch
    /// closed, and whose number was reused at once, does not reach the new handler.
    @Test func anEventOfAClosedDescriptorDoesNotReachTheNextOneWithItsNumber() async throws {
        let loop = try EpollEventLoop(name: "test-stale")
        let first = try SocketPair()
        let second = try SocketPair()
        let spare = try SocketPair()
        let heard = Recorder<String>()
        let swapper = Swapper(loop: loop, heard: heard)
        try await loop.submit {
            swapper.watch(first.local, "first")
            swapper.watch(second.local, "second")
            swapper.pair = (first.local, second.local, spare.local)
            // Both readable before the loop waits again: one batch, in that order.
            first.send("x")
            second.send("y")
        }.get()
        try await Task.sleep(for: .milliseconds(200))
        #expect(heard.all.count == 1)
        #expect(!heard.all.contains("newcomer"))
        try await loop.shutdownGracefully()
    }

    #if DEBUG
    /// The loop's own methods trap off its thread (debug builds).
    @Test func descriptorsAreWatchedOnTheLoopOnly() async {
        await #expect(processExitsWith: .failure) {
            let loop = try EpollEventLoop(name: "test-thread")
            let pair = try SocketPair()
            try loop.watch(pair.local, events: 1, Silent())
        }
    }

    @Test func timersAreSetOnTheLoopOnly() async {
        await #expect(processExitsWith: .failure) {
            let loop = try EpollEventLoop(name: "test-thread")
            _ = loop.scheduleTimer(NumberedTimer(0, Recorder()), at: .now())
        }
    }
    #endif
}

/// Hears nothing.
private final class Silent: EpollReadiness {
    func ready(_ events: UInt32) {}
}

/// The first of two watched descriptors to be ready closes the other and puts a new, idle
/// socket under its number, watched by a "newcomer" that must hear nothing.
private final class Swapper: @unchecked Sendable {
    let loop: EpollEventLoop
    let heard: Recorder<String>
    var pair: (Int32, Int32, Int32) = (-1, -1, -1)
    private var swapped = false

    init(loop: EpollEventLoop, heard: Recorder<String>) {
        self.loop = loop
        self.heard = heard
    }

    final class Handler: EpollReadiness {
        let name: String
        let descriptor: Int32
        let ready: (String) -> Void
        init(_ name: String, _ descriptor: Int32, _ ready: @escaping (String) -> Void) {
            self.name = name
            self.descriptor = descriptor
            self.ready = ready
        }
        func ready(_ events: UInt32) {
            // Drained, so that a level-triggered descriptor is heard once.
            var byte: UInt8 = 0
            while Glibc.read(descriptor, &byte, 1) > 0 {}
            ready(name)
        }
    }

    func watch(_ descriptor: Int32, _ name: String) {
        try! loop.watch(descriptor, events: 1 /* EPOLLIN */, Handler(name, descriptor) { [self] in ready($0) })
    }

    private func ready(_ name: String) {
        heard.append(name)
        guard !swapped else { return }
        swapped = true
        let other = name == "first" ? pair.1 : pair.0
        loop.closeWatched(other)
        // The idle spare socket takes the closed one's number. Linux's dup2 answers EBUSY when
        // another thread's open() is taking that number at the same moment (tests run in
        // parallel): tried again then.
        var duplicated = dup2(pair.2, other)
        while duplicated == -1 && (errno == EBUSY || errno == EINTR) { duplicated = dup2(pair.2, other) }
        precondition(duplicated == other, "dup2: errno \(errno)")
        watch(other, "newcomer")
    }
}

/// A connected pair of Unix stream sockets, closed when this goes.
final class SocketPair: @unchecked Sendable {
    let local: Int32
    let remote: Int32

    init() throws {
        var descriptors: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &descriptors) == 0 else {
            throw RawSocketError("socketpair", errno: errno)
        }
        local = descriptors[0]
        remote = descriptors[1]
    }

    func send(_ text: String) {
        _ = text.utf8CString.withUnsafeBytes { Glibc.write(remote, $0.baseAddress, text.utf8.count) }
    }

    deinit {
        close(remote)
    }
}
#endif
