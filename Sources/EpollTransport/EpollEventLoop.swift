#if os(Linux)
import CEpoll
import Dispatch
import Glibc
import Logging
import NIOCore
import Synchronization

/// An event loop of its own over epoll: one thread, one epoll instance, an eventfd to be
/// woken from other threads, a heap of timers. It is a NIO `EventLoop` (promises, futures,
/// `NIOLoopBound`, scheduled callbacks work on it as on NIO's own), but its sockets are bare
/// file descriptors instead of NIO channels: a connection costs one small object instead of
/// a channel with its pipeline (about 5 KB and 40 allocations per connection).
///
/// The descriptor and timer methods are the loop's own: they run on its thread only (checked
/// in debug builds).
public final class EpollEventLoop: EventLoop, @unchecked Sendable {
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
    /// `scheduleCallback`s by id, from any thread: NIO cancels them by id, and a cancel may
    /// come before the loop has taken the callback in.
    private let callbacks = Mutex<[UInt64: ScheduledWork]>([:])
    private let callbackIDs = Atomic<UInt64>(0)

    // Loop-only state (touched on the loop's thread only).
    /// The handler of each watched descriptor, by descriptor.
    private var watched: [(any EpollReadiness)?] = []
    /// Each descriptor's registration count, also carried in its epoll events (with the
    /// descriptor, as NIO's selector does): an event of a descriptor that was closed (and its
    /// number reused) since the loop took the batch in does not reach the new handler.
    private var registrations: [UInt32] = []
    private var timers = TimerQueue()
    private var deferred: [any EpollReadiness] = []
    /// Shared by every connection of this loop for its reads (each copies out what it read).
    let readScratch: UnsafeMutableRawBufferPointer
    let allocator = ByteBufferAllocator()
    public let name: String
    /// Where failed epoll_ctl calls are reported.
    let logger: Logger

    private static let wakeToken = UInt64.max

    public init(name: String, logger: Logger = Logger(label: "custody.epoll")) throws {
        self.name = name
        self.logger = logger
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
        event.data.u64 = Self.wakeToken
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

    public var inEventLoop: Bool { UInt64(pthread_self()) == threadID.load(ordering: .relaxed) }

    public func execute(_ task: @escaping @Sendable () -> Void) {
        let wake = tasks.withLock { tasks -> Bool in
            tasks.queue.append(task)
            return tasks.queue.count == 1
        }
        if wake && !inEventLoop { self.wake() }
    }

    public func scheduleTask<T>(deadline: NIODeadline, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        let promise = makePromise(of: T.self)
        let work = ScheduledTask(promise, task)
        onLoop { [self] in work.insert(on: self, at: deadline) }
        return Scheduled(promise: promise) { [self] in
            onLoop { [self] in work.cancel(on: self) }
        }
    }

    public func scheduleTask<T>(in delay: TimeAmount, _ task: @escaping @Sendable () throws -> T) -> Scheduled<T> {
        scheduleTask(deadline: .now() + delay, task)
    }

    @discardableResult
    public func scheduleCallback(
        at deadline: NIODeadline, handler: some (NIOScheduledCallbackHandler & Sendable)
    ) throws -> NIOScheduledCallback {
        let id = callbackIDs.add(1, ordering: .relaxed).newValue
        let work = ScheduledCallback(handler, id: id)
        callbacks.withLock { $0[id] = work }
        onLoop { [self] in work.insert(on: self, at: deadline) }
        return NIOScheduledCallback(self, id: id)
    }

    public func cancelScheduledCallback(_ scheduledCallback: NIOScheduledCallback) {
        guard let id = scheduledCallback.customCallbackID else { return }
        onLoop { [self] in
            callbacks.withLock { $0.removeValue(forKey: id) }?.cancel(on: self)
        }
    }

    /// A `scheduleCallback` ran: NIO will not cancel it any more.
    func forgetCallback(_ id: UInt64) {
        _ = callbacks.withLock { $0.removeValue(forKey: id) }
    }

    /// Runs `body` now when on the loop, else queued to it.
    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if inEventLoop { body() } else { execute(body) }
    }

    public func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable (Error?) -> Void) {
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

    public var description: String { "EpollEventLoop(\(name))" }

    // MARK: - Timers

    /// `handler.timerFired` runs at `deadline` (on this loop) unless cancelled first.
    public func scheduleTimer(_ handler: any EpollTimerHandler, at deadline: NIODeadline) -> EpollTimerID {
        assert(inEventLoop, "EpollEventLoop.scheduleTimer off its loop")
        return timers.schedule(handler, at: deadline.uptimeNanoseconds)
    }

    /// The timer will not fire; its handler hears nothing. An id that fired already cancels nothing.
    public func cancelTimer(_ id: EpollTimerID) {
        assert(inEventLoop, "EpollEventLoop.cancelTimer off its loop")
        timers.cancel(id)
    }

    /// Heap entries, cancelled ones not yet dropped included (for tests).
    var timerEntryCount: Int { timers.entryCount }

    // MARK: - Descriptors

    /// Watches `descriptor` for `events` (level-triggered); `handler` hears of them on this loop.
    public func watch(_ descriptor: Int32, events: UInt32, _ handler: any EpollReadiness) throws(RawSocketError) {
        assert(inEventLoop, "EpollEventLoop.watch off its loop")
        let index = Int(descriptor)
        if index >= watched.count {
            let more = index + 1 - watched.count
            watched.append(contentsOf: repeatElement(nil, count: more))
            registrations.append(contentsOf: repeatElement(0, count: more))
        }
        registrations[index] &+= 1
        var event = epoll_event()
        event.events = events
        event.data.u64 = token(descriptor)
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, descriptor, &event) == 0 else {
            throw RawSocketError("epoll_ctl(add)", errno: errno)
        }
        watched[index] = handler
    }

    /// Stops watching `descriptor` (it stays open). False when epoll refused (logged).
    @discardableResult
    public func unwatch(_ descriptor: Int32) -> Bool {
        assert(inEventLoop, "EpollEventLoop.unwatch off its loop")
        let index = Int(descriptor)
        if index < watched.count { watched[index] = nil }
        var event = epoll_event()
        return control(EPOLL_CTL_DEL, descriptor, &event, "epoll_ctl(del)")
    }

    /// Asks for other `events` of a watched descriptor. False when epoll refused (logged).
    /// Not for a descriptor watched with EPOLLEXCLUSIVE (epoll refuses): unwatch and watch it.
    @discardableResult
    public func modify(_ descriptor: Int32, events: UInt32) -> Bool {
        assert(inEventLoop, "EpollEventLoop.modify off its loop")
        var event = epoll_event()
        event.events = events
        event.data.u64 = token(descriptor)
        return control(EPOLL_CTL_MOD, descriptor, &event, "epoll_ctl(mod)")
    }

    /// Stops watching and closes `descriptor` (closing removes it from epoll).
    public func closeWatched(_ descriptor: Int32) {
        assert(inEventLoop, "EpollEventLoop.closeWatched off its loop")
        let index = Int(descriptor)
        if index < watched.count { watched[index] = nil }
        Glibc.close(descriptor)
    }

    /// `handler.afterEvents()` runs once the events at hand are handled (on this loop).
    public func afterEvents(_ handler: any EpollReadiness) {
        assert(inEventLoop, "EpollEventLoop.afterEvents off its loop")
        deferred.append(handler)
    }

    private func token(_ descriptor: Int32) -> UInt64 {
        UInt64(registrations[Int(descriptor)]) << 32 | UInt64(UInt32(bitPattern: descriptor))
    }

    private func control(_ operation: Int32, _ descriptor: Int32, _ event: inout epoll_event, _ call: String) -> Bool {
        guard epoll_ctl(epoll, operation, descriptor, &event) == 0 else {
            let error = RawSocketError(call, errno: errno)
            logger.error("epoll_ctl failed", metadata: ["loop": "\(name)", "descriptor": "\(descriptor)", "error": "\(error)"])
            return false
        }
        return true
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
            } else if let next = timers.nextDeadline() {
                let now = NIODeadline.now().uptimeNanoseconds
                timeout = next <= now ? 0 : Int32(min((next - now + 999_999) / 1_000_000, 60_000))
            }
            let count = epoll_wait(epoll, events, Int32(capacity), timeout)
            if count > 0 {
                for index in 0..<Int(count) {
                    let token = events[index].data.u64
                    if token == Self.wakeToken {
                        var value: UInt64 = 0
                        _ = read(wakeDescriptor, &value, 8)
                        continue
                    }
                    let slot = Int(UInt32(truncatingIfNeeded: token))
                    guard slot < watched.count, registrations[slot] == UInt32(truncatingIfNeeded: token >> 32),
                        let handler = watched[slot]
                    else { continue }
                    handler.ready(events[index].events)
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
        for handler in timers.removeAll() { handler.timerAbandoned(on: self) }
        callbacks.withLock { $0.removeAll() }
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
        guard let first = timers.nextDeadline() else { return }
        let now = NIODeadline.now().uptimeNanoseconds
        guard first <= now else { return }
        while let handler = timers.popDue(now: now) {
            handler.timerFired(on: self)
        }
    }
}
#endif
