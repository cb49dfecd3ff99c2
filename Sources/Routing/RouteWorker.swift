import AsyncHTTPClient
import Broker
import CustodyConfig
import Dispatch
import LMDBStorage
import LedgerCore
import Logging
import Synchronization

/// One route's delivery: its outbox in memory (the events the store holds for it, in order)
/// and the one task that sends them, the oldest first, one request at a time.
///
/// A request that fails with 408, 429 or 5xx (or gets no answer) is sent again after an
/// exponential backoff with jitter (`Retry-After` when the endpoint gives one), the same
/// events with the same ids, until it succeeds, `retry.maxAttempts` attempts failed, or its
/// oldest event is older than `retry.maxAgeMinutes`; then, as for any other 4xx, its events
/// go to the dead-letter target. An event leaves the store once delivered or dead-lettered.
/// Failed attempts are written to the events' records, so that a restart goes on counting.
final class RouteWorker: Sendable {
    let route: RouteConfiguration
    private let delivery: RouteDelivery
    private let deadLetter: DeadLetterSink
    private let store: BrokerStore
    private let metrics: RouteMetrics
    private let logger: Logger

    private struct State {
        /// Durable events not yet delivered nor dead-lettered, in order (`head` onwards).
        var pending: [OutboxRecord] = []
        var head = 0
        /// What the outbox holds or is about to (accepted, commit under way): its limits.
        var events = 0
        var bytes = 0
        var stopped = false
        /// After a reload: where events that still come to this worker go.
        var successor: RouteWorker?
        var waiting: CheckedContinuation<Void, Never>?
        /// Batch mode: the task waiting for a batch to fill (`waitForFullBatch`), resumed when
        /// it is full, at its deadline, or on `stop`; `fillingWait` tells one wait's timer
        /// from a later wait's.
        var filling: CheckedContinuation<Void, Never>?
        var fillingWait: UInt64 = 0
    }
    private let state = Mutex(State())

    init(route: RouteConfiguration, broker: Broker, store: BrokerStore, logger: Logger) {
        self.route = route
        delivery = RouteDelivery(route: route)
        deadLetter = DeadLetterSink(route: route.name, target: route.deadLetter, broker: broker)
        self.store = store
        metrics = RouteMetrics(route: route.name)
        self.logger = logger
    }

    // MARK: The outbox's bookkeeping (any thread)

    /// Takes room for an event of `size` bytes, if the outbox's limits leave it.
    func reserve(_ size: Int) -> Bool {
        state.withLock { state in
            if let successor = state.successor { return successor.reserve(size) }
            guard state.events < route.maxOutboxEvents, state.bytes + size <= route.maxOutboxBytes else { return false }
            state.events += 1
            state.bytes += size
            return true
        }
    }

    /// A reserved event that did not reach the store.
    func release(_ size: Int) {
        state.withLock { state in
            if let successor = state.successor { return successor.release(size) }
            state.events -= 1
            state.bytes -= size
        }
    }

    /// A reserved event, now durable: delivered in its turn.
    func enqueue(_ records: [OutboxRecord]) {
        var filled: CheckedContinuation<Void, Never>?
        let waiting = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let successor = state.successor {
                successor.enqueue(records)
                return nil
            }
            state.pending.append(contentsOf: records)
            if state.filling != nil, state.pending.count - state.head >= route.maxBatchEvents {
                filled = state.filling
                state.filling = nil
            }
            defer { state.waiting = nil }
            return state.waiting
        }
        waiting?.resume()
        filled?.resume()
    }

    /// At start: the events the store held for this route, reserved and pending.
    func load(_ records: [OutboxRecord]) {
        state.withLock { state in
            state.events += records.count
            state.bytes += records.reduce(0) { $0 + $1.size }
        }
        enqueue(records)
    }

    /// Events and bytes in the outbox (and on their way to it).
    var usage: (events: Int, bytes: Int) { state.withLock { ($0.events, $0.bytes) } }

    /// Stops after the attempt under way; what it holds goes to `successor` (a reload), or
    /// stays in the store for the next start.
    func stop(handingOverTo successor: RouteWorker? = nil) {
        let (waiting, left) = state.withLock { state -> ([CheckedContinuation<Void, Never>], [OutboxRecord]) in
            state.stopped = true
            state.successor = successor
            let left = Array(state.pending[state.head...])
            if let successor {
                successor.state.withLock { next in
                    next.events += state.events
                    next.bytes += state.bytes
                }
            }
            state.pending = []
            state.head = 0
            defer {
                state.waiting = nil
                state.filling = nil
            }
            return ([state.waiting, state.filling].compactMap { $0 }, left)
        }
        if let successor, !left.isEmpty { successor.enqueue(left) }
        for continuation in waiting { continuation.resume() }
    }

    // MARK: Delivery (its own task)

    /// Delivers until `stop`.
    func run(client: HTTPClient) async {
        while let batch = await nextBatch() {
            await deliver(batch, client: client)
        }
    }

    /// What `nextBatch` found.
    private enum Next {
        case stopped
        case empty
        /// Fewer events than a full batch.
        case notFull
        case batch([OutboxRecord])
    }

    /// The next events to send (nil: stopped), waiting for one if there is none. In batch
    /// mode a batch that is not full waits for more, up to `maxBatchWaitMilliseconds` from
    /// when it was first found so (a steady stream then goes in full requests, not in many
    /// small ones, each taking the endpoint's and the route's time).
    private func nextBatch() async -> [OutboxRecord]? {
        var waitingSince: ContinuousClock.Instant?
        let longestWait = Duration.milliseconds(route.maxBatchWaitMilliseconds)
        while true {
            let waitedEnough = waitingSince.map { ContinuousClock.now - $0 >= longestWait } ?? (longestWait == .zero)
            let next = state.withLock { state -> Next in
                if state.stopped { return .stopped }
                guard state.head < state.pending.count else { return .empty }
                guard route.mode == .batch else { return .batch([state.pending[state.head]]) }
                let available = state.pending.count - state.head
                if available < route.maxBatchEvents, !waitedEnough { return .notFull }
                let count = min(route.maxBatchEvents, available)
                return .batch(Array(state.pending[state.head..<(state.head + count)]))
            }
            switch next {
            case .stopped:
                return nil
            case .batch(let taken):
                refreshGauges()
                return taken
            case .notFull:
                let since = waitingSince ?? ContinuousClock.now
                waitingSince = since
                await waitForFullBatch(until: since + longestWait)
                continue
            case .empty:
                break
            }
            refreshGauges()
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state -> Bool in
                    if state.stopped || state.head < state.pending.count { return true }
                    state.waiting = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }

    private var stopped: Bool { state.withLock { $0.stopped } }

    /// Batch mode: until a full batch is pending, `deadline`, or `stop`.
    private func waitForFullBatch(until deadline: ContinuousClock.Instant) async {
        let remaining = deadline - ContinuousClock.now
        guard remaining > .zero else { return }
        await withCheckedContinuation { continuation in
            let wait = state.withLock { state -> UInt64? in
                if state.stopped || state.pending.count - state.head >= route.maxBatchEvents { return nil }
                state.fillingWait += 1
                state.filling = continuation
                return state.fillingWait
            }
            guard let wait else { return continuation.resume() }
            let (seconds, attoseconds) = remaining.components
            let nanoseconds = Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000)
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [self] in
                let due = state.withLock { state -> CheckedContinuation<Void, Never>? in
                    guard state.fillingWait == wait else { return nil }
                    defer { state.filling = nil }
                    return state.filling
                }
                due?.resume()
            }
        }
    }

    private func deliver(_ batch: [OutboxRecord], client: HTTPClient) async {
        var attempts = Int(batch.map(\.attempts).max() ?? 0)
        // The events as they are sent and dead-lettered: JSON (the store keeps them compact).
        let events = batch.map(StoredEvent.rendered)
        while !stopped {
            attempts += 1
            let outcome = await delivery.attempt(events, client: client)
            switch outcome {
            case .delivered:
                let now = wallClockMicroseconds()
                metrics.delivered.increment(by: batch.count)
                metrics.requests.increment()
                for record in batch { metrics.latency.recordNanoseconds(max(0, now - record.acceptedAt) * 1000) }
                remove(batch)
                return
            case .rejected(let status, let error):
                metrics.failed(status: status)
                await giveUp(batch, sent: events, reason: .rejected, attempts: attempts, status: status, error: error)
                return
            case .retry(let status, let error, let retryAfter):
                metrics.failed(status: status)
                let age = wallClockMicroseconds() - batch[0].acceptedAt
                if attempts >= route.maxAttempts || age > Int64(route.maxAgeMinutes) * 60_000_000 {
                    let reason: DeadLetterReason = attempts >= route.maxAttempts ? .maxAttempts : .maxAge
                    await giveUp(batch, sent: events, reason: reason, attempts: attempts, status: status, error: error)
                    return
                }
                remember(batch, attempts: attempts)
                let wait = retryAfter ?? RouteDelivery.backoff(attempts: attempts)
                logger.debug("route delivery failed, retrying", metadata: [
                    "route": "\(route.name)", "status": "\(status.map { "\($0)" } ?? "-")", "error": "\(error)",
                    "attempt": "\(attempts)", "retry_in_seconds": "\(wait)",
                ])
                await pause(seconds: wait)
            }
        }
    }

    /// Sleeps, unless stopped first.
    private func pause(seconds: Double) async {
        let until = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while !stopped, ContinuousClock.now < until {
            try? await Task.sleep(for: min(.milliseconds(100), until - ContinuousClock.now))
        }
    }

    /// `sent`: the events as sent (JSON), dead-lettered; `batch`: their records, removed.
    private func giveUp(
        _ batch: [OutboxRecord], sent: [OutboxRecord], reason: DeadLetterReason, attempts: Int, status: Int?, error: String
    ) async {
        while !stopped {
            do {
                try deadLetter.write(sent, reason: reason, attempts: attempts, lastStatus: status, error: error)
                break
            } catch {
                logger.error("route dead-letter write failed; the events stay in the outbox", metadata: [
                    "route": "\(route.name)", "error": "\(error)",
                ])
                await pause(seconds: 5)
            }
        }
        guard !stopped else { return }
        metrics.deadLettered.increment(by: batch.count)
        logger.warning("route events dead-lettered", metadata: [
            "route": "\(route.name)", "events": "\(batch.count)", "reason": "\(reason.rawValue)",
            "attempts": "\(attempts)", "last_status": "\(status.map { "\($0)" } ?? "-")", "error": "\(error)",
        ])
        remove(batch)
    }

    /// An event that never reached the outbox (it was full): straight to dead-letter.
    func overflowed(_ record: OutboxRecord) {
        do {
            try deadLetter.write(
                [StoredEvent.rendered(record)], reason: .outboxFull, attempts: 0, lastStatus: nil, error: "the route's outbox is full")
            metrics.deadLettered.increment()
        } catch {
            logger.error("route dead-letter write failed; an event of a full outbox is lost", metadata: [
                "route": "\(route.name)", "number": "\(record.number)", "error": "\(error)",
            ])
        }
    }

    /// Delivered or dead-lettered: out of memory and of the store.
    private func remove(_ batch: [OutboxRecord]) {
        state.withLock { state in
            guard !state.stopped, state.head + batch.count <= state.pending.count,
                state.pending[state.head].number == batch[0].number
            else { return }
            state.head += batch.count
            state.events -= batch.count
            state.bytes -= batch.reduce(0) { $0 + $1.size }
            // Drop what was sent once it is most of the array.
            if state.head > 1024, state.head * 2 > state.pending.count {
                state.pending.removeFirst(state.head)
                state.head = 0
            }
        }
        let deletes = batch.filter(\.inStore).map(\.delete)
        if !deletes.isEmpty { store.submit(deletes) }
    }

    /// The failed attempts so far, in the events' records (format 2).
    private func remember(_ batch: [OutboxRecord], attempts: Int) {
        let puts = batch.filter(\.inStore).map { record in
            var record = record
            record.attempts = UInt32(clamping: attempts)
            return record.put
        }
        if !puts.isEmpty { store.submit(puts) }
    }

    private func refreshGauges() {
        let (events, oldest) = state.withLock { state in
            (state.events, state.head < state.pending.count ? state.pending[state.head].acceptedAt : nil)
        }
        metrics.outbox(events: events, oldestAcceptedAt: oldest, now: wallClockMicroseconds())
    }
}
