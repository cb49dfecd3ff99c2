#if os(Linux)
import CEpoll
import Dispatch
import Glibc
import NIOCore
import Synchronization

/// What an `EpollEventLoop` calls when a file descriptor it watches is ready (on the loop).
protocol EpollReadiness: AnyObject {
    /// `events`: the epoll bits that are set (EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP).
    func ready(_ events: UInt32)
    /// Asked for with `EpollEventLoop.afterEvents`: runs once the current events are handled.
    func afterEvents()
}

extension EpollReadiness {
    func afterEvents() {}
}

/// An event loop of its own over epoll, for the plain-TCP listeners (RawTCP.swift): one
/// thread, one epoll instance, an eventfd to be woken from other threads, a heap of timers.
/// It is a NIO `EventLoop` (promises, futures, `NIOLoopBound`, scheduled callbacks work on
/// it as on NIO's own), but its sockets are bare file descriptors instead of NIO channels:
/// a connection costs one small object instead of a channel with its pipeline (about
/// 5 KB and 40 allocations per connection).
final class EpollEventLoop: EventLoop, @unchecked Sendable {
    private let epoll: Int32
    private let wakeDescriptor: Int32
    private var thread = pthread_t()
    private let threadID = Atomic<UInt64>(0)
    private let tasks = Mutex<Tasks>(Tasks())
    private struct Tasks {
        var queue: [@Sendable () -> Void] = []
        var stopping = false
    }
    /// Who waits for the loop to stop; nil once it has.
    private let stopped = Mutex<[(DispatchQueue, @Sendable (Error?) -> Void)]?>([])

    // Loop-only state (touched on the loop's thread only).
    private var watched: [(any EpollReadiness)?] = []
    private var timers = TimerHeap()
    /// Each timer's action: a `TaskTimer`, or the callback handler itself (one pointer an
    /// entry: a held connection's keep-alive costs a heap entry and this, nothing more).
    private var timerActions: [UInt64: AnyObject] = [:]
    private var nextTimerID: UInt64 = 1
    /// Shared by every connection of this loop for its reads (each copies out what it read).
    let readScratch: UnsafeMutableRawBufferPointer
    private var deferred: [any EpollReadiness] = []
    let allocator = ByteBufferAllocator()
    let name: String

    /// A `scheduleTask`: what to run, and how to fail its promise when the loop stops first.
    private final class TaskTimer {
        let run: () -> Void
        let abandon: () -> Void
        init(_ run: @escaping () -> Void, abandon: @escaping () -> Void) {
            self.run = run
            self.abandon = abandon
        }
    }

    init(name: String) throws {
        self.name = name
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw RawSocketError("epoll_create1", errno: errno) }
        wakeDescriptor = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeDescriptor >= 0 else {
            Glibc.close(epoll)
            throw RawSocketError("eventfd", errno: errno)
        }
        readScratch = .allocate(byteCount: 65_536, alignment: 16)
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = UInt64.max
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, wakeDescriptor, &event) == 0 else {
            Glibc.close(epoll)
            Glibc.close(wakeDescriptor)
            throw RawSocketError("epoll_ctl(eventfd)", errno: errno)
        }
        let box = Unmanaged.passRetained(self)
        let result = pthread_create(&thread, nil, { argument in
            let loop = Unmanaged<EpollEventLoop>.fromOpaque(argument!).takeRetainedValue()
            loop.run()
            return nil
        }, box.toOpaque())
        guard result == 0 else {
            box.release()
            Glibc.close(epoll)
            Glibc.close(wakeDescriptor)
            throw RawSocketError("pthread_create", errno: result)
        }
        // The thread sets its id first thing; wait for it so that inEventLoop is right at once.
        while threadID.load(ordering: .acquiring) == 0 { sched_yield() }
    }

    // MARK: - EventLoop

    var inEventLoop: Bool { UInt64(pthread_self()) == threadID.load(ordering: .relaxed) }

    func execute(_ task: @escaping @Sendable () -> Void) {
        let wake = tasks.withLock { tasks -> Bool in
            tasks.queue.append(task)
            return tasks.queue.count == 1
        }
        if wake && !inEventLoop { self.wake() }
    }

    func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        let id = allocateTimer(deadline, abandon: { promise.fail(EventLoopError.shutdown) }) {
            // Timers run on this loop: the result need not be Sendable.
            do { promise.assumeIsolated().succeed(try task()) } catch { promise.fail(error) }
        }
        return Scheduled(promise: promise) { [self] in
            cancelTimer(id, failing: { promise.fail(EventLoopError.cancelled) })
        }
    }

    func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    @discardableResult
    func scheduleCallback(
        at deadline: NIODeadline, handler: some (NIOScheduledCallbackHandler & Sendable)
    ) throws -> NIOScheduledCallback {
        if inEventLoop {
            let id = nextTimerID
            nextTimerID += 1
            timerActions[id] = handler as AnyObject
            timers.push(deadline.uptimeNanoseconds, id)
            return NIOScheduledCallback(self, id: id)
        }
        let id = allocateTimerID()
        execute { [self] in
            timerActions[id] = handler as AnyObject
            timers.push(deadline.uptimeNanoseconds, id)
        }
        return NIOScheduledCallback(self, id: id)
    }

    /// A connection's connect timeout or keep-alive (on this loop): its
    /// `handleScheduledCallback` runs at `deadline`; returns the id to cancel it with.
    func scheduleConnectionTimer(_ connection: MQTTConnection, at deadline: NIODeadline) -> UInt64 {
        let id = nextTimerID
        nextTimerID += 1
        timerActions[id] = connection
        timers.push(deadline.uptimeNanoseconds, id)
        return id
    }

    /// A connection's timer will not fire (on this loop; its handler hears nothing).
    func cancelConnectionTimer(_ id: UInt64) {
        timerActions.removeValue(forKey: id)
    }

    func cancelScheduledCallback(_ scheduledCallback: NIOScheduledCallback) {
        guard let id = scheduledCallback.customCallbackID else { return }
        if inEventLoop {
            if let handler = timerActions.removeValue(forKey: id) as? any NIOScheduledCallbackHandler {
                handler.didCancelScheduledCallback(eventLoop: self)
            }
        } else {
            execute { [self] in cancelScheduledCallback(scheduledCallback) }
        }
    }

    func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
        let first = stopped.withLock { waiting -> Bool? in
            guard waiting != nil else { return nil }
            waiting!.append((queue, callback))
            return waiting!.count == 1
        }
        guard let first else {
            queue.async { callback(nil) }  // already stopped
            return
        }
        guard first else { return }
        tasks.withLock { $0.stopping = true }
        wake()
        // Joined off the loop (this may be called from it); the callbacks run once it is gone.
        DispatchQueue.global().async { [self] in
            pthread_join(thread, nil)
            let waiting = stopped.withLock { waiting in
                defer { waiting = nil }
                return waiting ?? []
            }
            for (queue, callback) in waiting { queue.async { callback(nil) } }
        }
    }

    var description: String { "EpollEventLoop(\(name))" }

    // MARK: - Descriptors

    /// Watches `descriptor` for `events` (level-triggered); `handler` hears of them on this loop.
    func watch(_ descriptor: Int32, events: UInt32, _ handler: any EpollReadiness) throws {
        var event = epoll_event()
        event.events = events
        event.data.u64 = UInt64(descriptor)
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
            throw RawSocketError("epoll_ctl(add)", errno: errno)
        }
        let index = Int(descriptor)
        if index >= watched.count { watched.append(contentsOf: repeatElement(nil, count: index + 1 - watched.count)) }
        watched[index] = handler
    }

    /// Stops watching `descriptor` (it stays open).
    func unwatch(_ descriptor: Int32) {
        var event = epoll_event()
        _ = epoll_ctl(epoll, EPOLL_CTL_DEL, descriptor, &event)
        let index = Int(descriptor)
        if index < watched.count { watched[index] = nil }
    }

    /// `handler.afterEvents()` runs once the events at hand are handled (on this loop).
    func afterEvents(_ handler: any EpollReadiness) {
        deferred.append(handler)
    }

    func change(_ descriptor: Int32, events: UInt32) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = UInt64(descriptor)
        _ = epoll_ctl(epoll, EPOLL_CTL_MOD, descriptor, &event)
    }

    /// Stops watching and closes `descriptor` (closing removes it from epoll).
    func closeWatched(_ descriptor: Int32) {
        let index = Int(descriptor)
        if index < watched.count { watched[index] = nil }
        Glibc.close(descriptor)
    }

    // MARK: - The loop

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeDescriptor, &one, 8)
    }

    private func run() {
        threadID.store(UInt64(pthread_self()), ordering: .releasing)
        _ = cepoll_set_thread_name(name)
        let capacity = 256
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        var running: [@Sendable () -> Void] = []
        while true {
            let (pending, stopping) = tasks.withLock { ($0.queue.isEmpty == false, $0.stopping) }
            if stopping && !pending { break }
            var timeout: Int32 = -1
            if pending {
                timeout = 0
            } else if let next = timers.peek() {
                let now = NIODeadline.now().uptimeNanoseconds
                timeout = next.deadline <= now ? 0 : Int32(min((next.deadline - now + 999_999) / 1_000_000, 60_000))
            }
            let count = epoll_wait(epoll, events, Int32(capacity), timeout)
            if count > 0 {
                for index in 0..<Int(count) {
                    let token = events[index].data.u64
                    if token == UInt64.max {
                        var value: UInt64 = 0
                        _ = read(wakeDescriptor, &value, 8)
                        continue
                    }
                    let slot = Int(token)
                    if slot < watched.count, let handler = watched[slot] { handler.ready(events[index].events) }
                }
            }
            runDeferred()
            runDueTimers()
            runDeferred()
            tasks.withLock { swap(&running, &$0.queue) }
            for task in running { task() }
            running.removeAll(keepingCapacity: true)
            runDeferred()
        }
        // Stopping: scheduled work is cancelled, watched descriptors closed.
        for (_, action) in timerActions {
            if let task = action as? TaskTimer {
                task.abandon()
            } else if let handler = action as? any NIOScheduledCallbackHandler {
                handler.didCancelScheduledCallback(eventLoop: self)
            }
        }
        timerActions.removeAll()
        for index in watched.indices where watched[index] != nil {
            watched[index] = nil
            Glibc.close(Int32(index))
        }
        Glibc.close(epoll)
        Glibc.close(wakeDescriptor)
        readScratch.deallocate()
    }

    private func runDeferred() {
        while !deferred.isEmpty {
            let handlers = deferred
            deferred.removeAll(keepingCapacity: true)
            for handler in handlers { handler.afterEvents() }
        }
    }

    private func runDueTimers() {
        guard let first = timers.peek() else { return }
        let now = NIODeadline.now().uptimeNanoseconds
        guard first.deadline <= now else { return }
        while let next = timers.peek(), next.deadline <= now {
            timers.pop()
            guard let action = timerActions.removeValue(forKey: next.id) else { continue }
            if let connection = action as? MQTTConnection {
                connection.handleScheduledCallback(eventLoop: self)
            } else if let task = action as? TaskTimer {
                task.run()
            } else if let handler = action as? any NIOScheduledCallbackHandler {
                handler.handleScheduledCallback(eventLoop: self)
            }
        }
    }

    private let timerIDs = Atomic<UInt64>(1 << 62)

    /// Ids made off the loop come from a range of their own.
    private func allocateTimerID() -> UInt64 {
        timerIDs.add(1, ordering: .relaxed).newValue
    }

    private func allocateTimer(
        _ deadline: NIODeadline, abandon: @escaping @Sendable () -> Void, _ action: @escaping @Sendable () -> Void
    ) -> UInt64 {
        if inEventLoop {
            let id = nextTimerID
            nextTimerID += 1
            timerActions[id] = TaskTimer(action, abandon: abandon)
            timers.push(deadline.uptimeNanoseconds, id)
            return id
        }
        let id = allocateTimerID()
        execute { [self] in
            timerActions[id] = TaskTimer(action, abandon: abandon)
            timers.push(deadline.uptimeNanoseconds, id)
        }
        return id
    }

    private func cancelTimer(_ id: UInt64, failing: @escaping @Sendable () -> Void) {
        if inEventLoop {
            if timerActions.removeValue(forKey: id) != nil { failing() }
        } else {
            execute { [self] in
                if timerActions.removeValue(forKey: id) != nil { failing() }
            }
        }
    }
}

/// A binary min-heap of (deadline, id); cancelled ids stay until they come up and are skipped.
struct TimerHeap {
    struct Entry {
        var deadline: UInt64
        var id: UInt64
    }

    private var entries: [Entry] = []

    var isEmpty: Bool { entries.isEmpty }

    func peek() -> Entry? { entries.first }

    mutating func push(_ deadline: UInt64, _ id: UInt64) {
        entries.append(Entry(deadline: deadline, id: id))
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.before(entries[child], entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    @discardableResult
    mutating func pop() -> Entry? {
        guard !entries.isEmpty else { return nil }
        let top = entries[0]
        let last = entries.removeLast()
        guard !entries.isEmpty else { return top }
        entries[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < entries.count else { break }
            var smallest = left
            if left + 1 < entries.count, Self.before(entries[left + 1], entries[left]) { smallest = left + 1 }
            guard Self.before(entries[smallest], entries[parent]) else { break }
            entries.swapAt(smallest, parent)
            parent = smallest
        }
        return top
    }

    private static func before(_ a: Entry, _ b: Entry) -> Bool {
        a.deadline < b.deadline || (a.deadline == b.deadline && a.id < b.id)
    }
}
#endif
