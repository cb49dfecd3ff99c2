#if os(Linux)
/// An `EpollEventLoop`'s timers: a binary min-heap of deadlines over a table of slots that
/// hold the handlers. Cancelling frees the slot at once; its heap entry, dead, is skipped when
/// it comes up, and the heap is rebuilt without the dead once they are more than half of it
/// (a connect storm cancels every connect timeout and keep-alive long before its deadline:
/// at 10k cycles a second and a 60 s keep-alive, a heap that only drops dead entries at their
/// deadline would hold about a million).
struct TimerQueue {
    /// 16 bytes, as the heap held before it had slots: the sequence both orders equal
    /// deadlines (they fire in the order they were set, as on NIO's loops) and tells a live
    /// entry from a dead one (its slot holds another sequence, or none).
    struct Entry {
        var deadline: UInt64
        var sequence: UInt32
        var slot: UInt32
    }

    private struct Slot {
        var handler: (any EpollTimerHandler)?
        /// The timer's that is in the slot, or was last.
        var sequence: UInt32
    }

    private var entries: [Entry] = []
    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    /// Entries whose timer was cancelled.
    private var dead = 0
    /// Wraps after 2^32 timers; entries compare by their difference, and no dead entry lives
    /// that long.
    private var sequence: UInt32 = 0
    /// Below this many entries the heap is never rebuilt: dead ones are popped soon enough.
    private static let compactionFloor = 64

    /// Heap entries, the dead included.
    var entryCount: Int { entries.count }
    var isEmpty: Bool { entries.count == dead }

    mutating func schedule(_ handler: any EpollTimerHandler, at deadline: UInt64) -> EpollTimerID {
        sequence &+= 1
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
            slots[Int(slot)] = Slot(handler: handler, sequence: sequence)
        } else {
            slot = UInt32(slots.count)
            slots.append(Slot(handler: handler, sequence: sequence))
        }
        push(Entry(deadline: deadline, sequence: sequence, slot: slot))
        return EpollTimerID(slot: slot, sequence: sequence)
    }

    /// The handler of `id` when it was still pending (it will not fire); nil otherwise.
    @discardableResult
    mutating func cancel(_ id: EpollTimerID) -> (any EpollTimerHandler)? {
        guard Int(id.slot) < slots.count, slots[Int(id.slot)].sequence == id.sequence,
            let handler = release(id.slot)
        else { return nil }
        dead += 1
        if dead > entries.count / 2 && entries.count >= Self.compactionFloor { compact() }
        return handler
    }

    /// The earliest deadline of a pending timer.
    mutating func nextDeadline() -> UInt64? {
        dropDeadTop()
        return entries.first?.deadline
    }

    /// The handler of the earliest timer due at `now`, which is then no longer pending.
    mutating func popDue(now: UInt64) -> (any EpollTimerHandler)? {
        dropDeadTop()
        guard let top = entries.first, top.deadline <= now else { return nil }
        pop()
        return release(top.slot)
    }

    /// Every pending handler; the queue is empty after.
    mutating func removeAll() -> [any EpollTimerHandler] {
        let handlers = slots.compactMap(\.handler)
        entries.removeAll()
        slots.removeAll()
        freeSlots.removeAll()
        dead = 0
        return handlers
    }

    private func isLive(_ entry: Entry) -> Bool {
        Self.isLive(entry, in: slots)
    }

    private static func isLive(_ entry: Entry, in slots: [Slot]) -> Bool {
        slots[Int(entry.slot)].sequence == entry.sequence && slots[Int(entry.slot)].handler != nil
    }

    private mutating func release(_ slot: UInt32) -> (any EpollTimerHandler)? {
        guard let handler = slots[Int(slot)].handler else { return nil }
        slots[Int(slot)].handler = nil
        freeSlots.append(slot)
        return handler
    }

    private mutating func dropDeadTop() {
        while let top = entries.first, !isLive(top) {
            pop()
            dead -= 1
        }
    }

    private mutating func compact() {
        let slots = self.slots
        entries.removeAll { !Self.isLive($0, in: slots) }
        dead = 0
        // Floyd's heap construction: sift down every parent, last first.
        var parent = entries.count / 2 - 1
        while parent >= 0 {
            siftDown(parent)
            parent -= 1
        }
    }

    private mutating func push(_ entry: Entry) {
        entries.append(entry)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.before(entries[child], entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func pop() {
        let last = entries.removeLast()
        guard !entries.isEmpty else { return }
        entries[0] = last
        siftDown(0)
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < entries.count else { return }
            var smallest = left
            if left + 1 < entries.count, Self.before(entries[left + 1], entries[left]) { smallest = left + 1 }
            guard Self.before(entries[smallest], entries[parent]) else { return }
            entries.swapAt(smallest, parent)
            parent = smallest
        }
    }

    private static func before(_ a: Entry, _ b: Entry) -> Bool {
        a.deadline < b.deadline || (a.deadline == b.deadline && Int32(bitPattern: a.sequence &- b.sequence) < 0)
    }
}
#endif
