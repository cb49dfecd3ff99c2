// The pub/sub core: see DESIGN.md §3. One class behind one lock; each concern is an extension in its own
// file (Broker+*.swift).
import Foundation
import LedgerCore
import LMDBStorage
import Synchronization

/// The pub/sub core: topic tree, subscriptions, QoS 0/1/2 flows in both directions,
/// per-session queues and in-flight windows, and persistence of sessions with an expiry.
///
/// **Durability.** For a persistent session (expiry > 0) its subscriptions, queued and
/// in-flight QoS 1/2 messages, and inbound QoS 2 identifiers awaiting PUBREL live in an LMDB
/// store (`directory`). A SUBACK, UNSUBACK, PUBACK, PUBREC or PUBCOMP that promises something
/// is returned only after it is committed (group commit: one writer thread, one transaction
/// and one fsync for every waiting write). A message bound for a persistent session is also
/// sent to it only once durable, so that nothing a client received can be forgotten by a
/// crash. Bookkeeping that promises nothing to anyone (an acknowledged message deleted, a
/// packet identifier assigned) is written in the same order but not waited for: after a crash
/// such a message is delivered again with DUP, which QoS 1 allows and QoS 2's packet
/// identifier check absorbs.
///
/// **Limits** (`BrokerLimits`, README "Limits"). Each session queues at most
/// `queueMaxMessages` messages and `queueMaxBytes` payload bytes beyond its in-flight window.
/// When one more would pass either bound, `queueOverflow` decides: `dropOldest` drops the
/// OLDEST queued messages (never one in flight), in memory and in the store, and counts them
/// (`BrokerSessionInfo.dropped`, `totals.droppedQueueFull`): a device that returns after a
/// long absence gets the latest state rather than a stale backlog. `endSession` stops queueing
/// for the session and asks the `BrokerObserver` to end it, as Event Grid does
/// (SessionOverflow). QoS 0 messages are not queued for detached sessions. A session holds at
/// most `maxSubscriptionsPerSession` filters (SUBACK 0x97 for new ones past it); a retained
/// message larger than `maxRetainedBytes`, or for a new topic once `maxRetainedMessages`
/// topics have one, is not retained (v5 QoS 1/2: refused with PUBACK/PUBREC 0x97, and then
/// not delivered either). Each refusal or cut is told to the observer (`limitExceeded`), after
/// the lock.
///
/// **A write that fails is not applied.** What a decision changed in memory ahead of its
/// commit (subscriptions, retained messages, deliveries queued for persistent sessions and the
/// drops that made room for them) is put back as it was when the commit fails (`StoreBatch`'s
/// undo log, `Broker+Undo.swift`), so that memory never holds what the store does not, nor
/// lacks what the store still holds.
///
/// **In-flight window.** At most the client's Receive Maximum (clamped to 1...65535) QoS 1/2
/// messages are unacknowledged at once; the rest wait in the queue. The front passes the v5
/// CONNECT's Receive Maximum (65535 when absent) and may pass a smaller bound (e.g. 20) for
/// 3.1.1 clients, which announce none.
///
/// **Order.** Messages to one session go out in the order the broker accepted them, per QoS.
/// The front should hand one connection's packets to `handle` one at a time (awaiting each),
/// so that one publisher's messages keep their order.
///
/// **Retained messages.** A PUBLISH with RETAIN replaces its topic's retained message (an
/// empty payload deletes it), in memory and in the store (`retained` table), committed before
/// the PUBACK/PUBREC. A SUBSCRIBE gets the matching retained messages (RETAIN 1, at the lower
/// of the message's and the subscription's QoS) after its SUBACK, in `handle`'s answers, as
/// Retain Handling says (3.1.1: always).
///
/// **Shared subscriptions.** `$share/{ShareName}/{filter}` (v5 and 3.1.1): each matching
/// message goes to one member of the share, round robin, preferring connected members with
/// room in their window, then any connected member, then a detached persistent member (whose
/// queue keeps it). Invalid share names get 0x8F (3.1.1: 0x80); No Local on one is a
/// protocol error (v5). Shares get no retained messages.
///
/// **Wills.** `BrokerSession.setWill` after `attach`; `detach(_:publishWill:)` publishes it
/// (after its delay, on the broker's timer), `attach` of the same session cancels a waiting
/// one, `endSession` (and `retainOnly` for the sessions it drops) publish it at once. The
/// will of a persistent session with a delay is also kept in the store (`W` record, one
/// unwaited put per CONNECT with such a will): after a restart it goes when due, and a stop
/// while its connection was up counts as an unclean end (due = restart + delay). Other
/// waiting wills (memory-only broker) are published by `close`.
///
/// **Message expiry.** A message's remaining Message Expiry Interval goes out with it;
/// queued messages whose interval passed are dropped (at the head of the queue, and by a
/// periodic sweep over every queue: `sweepExpired`), also from the store.
///
/// Not here: topic aliases (the front refuses inbound ones and sends none).
public final class Broker: @unchecked Sendable {
    let lock = NSLock()
    let store: BrokerStore?
    /// What one session may take; read and replaced under `lock` only.
    var currentLimits: BrokerLimits
    public var limits: BrokerLimits { locked { currentLimits } }
    /// Told about limits exceeded and queues overflowed (see `BrokerObserver`); nil: nobody.
    let observer: (any BrokerObserver)?
    /// What to tell `observer`, decided under the lock and told after it (`locked`).
    var notices: [BrokerNotice] = []
    var tree = TopicTree()
    var sessions: [SessionName: SessionState] = [:]
    var sequence: UInt64 = 0
    var attachments: UInt64 = 0
    /// Numbers each subscription a SUBSCRIBE makes (`Subscriber.stamp`).
    var subscriptionStamps: UInt64 = 0
    var matches: [Match] = []
    var closed = false
    var dirtySessions: [SessionState] = []
    /// Writes that promise nothing, kept back for the next commit (`submit`): one entry per
    /// submission they will be; the last one only deletes (`pendingTailOnlyDeletes`) when
    /// later deletes may join it. `pendingWriteCount`: their operations.
    var pendingWrites: [[BrokerStoreOperation]] = []
    var pendingTailOnlyDeletes = false
    var pendingWriteCount = 0
    /// Whether `pendingWrites` may hold anything: read by the store's idle hook without the
    /// lock, so that an idle writer takes the lock only when there is something to hand over.
    let writesPending = Atomic<Bool>(false)
    /// Waited submissions the store has answered, until `settleCommitted` (its own lock: the
    /// store's writer appends to it without the broker's).
    let committed = Mutex<[Committed]>([])
    /// The retained message of each topic that has one.
    var retained: [String: Message] = [:]
    /// Wall clock in µs since the epoch (injectable for tests of Message Expiry and timers).
    let clock: @Sendable () -> Int64
    /// Fires `fireDueTimers` (nil with `BrokerTimerDriver.manual`); `armedDeadline` is
    /// what it is set for, by `clock`.
    let timer: DispatchSourceTimer?
    var armedDeadline: Int64 = .max
    /// Wills waiting out their delay (each session's `willDue`), including cancelled ones
    /// until the next firing; `willsScheduled` numbers them.
    var waitingWills: [ObjectIdentifier: SessionState] = [:]
    var willsScheduled: UInt64 = 0
    /// µs between expiry sweeps (nil: none), and when the next is due, by `clock`.
    let sweepInterval: Int64?
    var nextSweep: Int64
    var willsPublished = 0
    var redistributed = 0
    var serverPublished = 0
    /// Since the broker started, under the names `Totals` gives them: queued messages dropped
    /// from full queues and because their Message Expiry Interval passed, and PUBLISHes not
    /// sent because they exceed a client's Maximum Packet Size.
    var droppedQueueFull = 0
    var droppedExpired = 0
    var droppedTooLarge = 0
    /// Sees every accepted client PUBLISH (routes); nil: nobody.
    var tap: (any BrokerPublishTap)?
    /// Carries what clients publish here to the cluster's other nodes; nil: one node.
    var clusterLink: (any BrokerClusterLink)?
    /// Connected sessions whose queue may hold something (`Broker+Room.swift`): every connected
    /// session with a queued message is here; entries that no longer are go at the next look.
    var backlogged: [ObjectIdentifier: SessionState] = [:]
    /// What `load` does with the wills of sessions whose connection was up when the broker
    /// stopped (`StoredWills`).
    let storedWills: StoredWills
    /// Whether anyone asked `routingRoom` (the cluster's consumer): `backlogged` is kept only then.
    var roomWatched = false
    /// Whether `tap` was ever set: read without the lock by who would describe publishers for it.
    let tapInstalled = Atomic<Bool>(false)

    /// `directory`: where persistent session state lives (created if missing); nil = memory only.
    /// `limits`: what one session may take (`BrokerLimits`); `observer`: who hears of them.
    /// `storeOptions`: the LMDB map size (default 16 GiB of address space; the file grows as it fills).
    /// `clock`: µs since the epoch; `expirySweepInterval`: how often queued messages whose
    /// Message Expiry Interval has passed are dropped from every queue and from the store
    /// (nil: only when they reach the head of a queue, and on `sweepExpired()`).
    /// `timers`: `.manual` leaves will delays and the sweep to `fireDueTimers()`.
    public init(
        directory: String?, limits: BrokerLimits = BrokerLimits(), storeOptions: BrokerStoreOptions = BrokerStoreOptions(),
        clock: (@Sendable () -> Int64)? = nil, expirySweepInterval: Duration? = .seconds(60),
        timers: BrokerTimerDriver = .dispatch, observer: (any BrokerObserver)? = nil,
        wills: StoredWills = .publish
    ) throws {
        self.storedWills = wills
        self.currentLimits = limits
        self.observer = observer
        let clock = clock ?? { wallClockMicroseconds() }
        self.clock = clock
        let interval = expirySweepInterval.map {
            $0.components.seconds * 1_000_000 + $0.components.attoseconds / 1_000_000_000_000
        }
        sweepInterval = interval
        nextSweep = interval.map { clock() + $0 } ?? .max
        // Made (and activated, not armed) before `load`, which schedules the wills it finds;
        // its handler needs the whole `self`, so it is armed for real at the end.
        switch timers {
        case .dispatch:
            let source = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "custody.broker.timers"))
            source.resume()
            timer = source
        case .manual:
            timer = nil
        }
        if let directory {
            store = try BrokerStore(directory: directory, options: storeOptions)
            do {
                try load()
            } catch {
                timer?.cancel()
                store?.close()
                throw error
            }
            // Writes kept back while the writer was busy go as soon as it has nothing else.
            store?.whenIdle { [weak self] in
                guard let self, writesPending.load(ordering: .acquiring) else { return }
                locked { flushPendingWrites() }
            }
            store?.whenAnswered { [weak self] in self?.settleCommitted() }
        } else {
            store = nil
        }
        if let timer {
            timer.setEventHandler { [weak self] in self?.fireDueTimers() }
            locked { armForNextDeadline() }
        }
    }

    deinit {
        timer?.cancel()
    }

    /// Stops the store's writer after the writes already queued; later writes fail.
    ///
    /// Wills still waiting for their delay that are not in the store are published first
    /// (server shutdown ends the connection); stored ones wait for their delay after the restart.
    public func close() {
        timer?.cancel()
        locked {
            for state in sessions.values where !state.willStored {
                guard let will = state.pendingWill else { continue }
                state.pendingWill = nil
                publishWill(will, from: state)
            }
            writeStaleRecords()
            flushPendingWrites()
            closed = true
        }
        store?.close()
    }

    /// Runs `body` under the lock, then sends what it posted.
    func locked<R>(_ body: () throws(BrokerError) -> R) throws(BrokerError) -> R {
        lock.lock()
        let result: R
        do {
            result = try body()
        } catch {
            let dirty = takeDirty()
            let told = takeNotices()
            lock.unlock()
            for session in dirty { drain(session) }
            tell(told)
            throw error
        }
        let dirty = takeDirty()
        let told = takeNotices()
        lock.unlock()
        for session in dirty { drain(session) }
        tell(told)
        return result
    }

    /// Limits from now on (a reload): new subscriptions, retained messages and queued
    /// messages are held to them; what is held already is not trimmed.
    public func replaceLimits(_ limits: BrokerLimits) {
        locked { currentLimits = limits }
    }

    func locked<R>(_ body: () -> R) -> R {
        lock.lock()
        let result = body()
        let dirty = takeDirty()
        let told = takeNotices()
        lock.unlock()
        for session in dirty { drain(session) }
        tell(told)
        return result
    }
}
