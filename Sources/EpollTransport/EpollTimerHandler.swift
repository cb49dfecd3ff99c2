#if os(Linux)
/// What an `EpollEventLoop` calls when a timer set with `scheduleTimer` comes due. A class
/// that owns its timers adopts this itself, so that a timer costs no object of its own (a
/// held connection's keep-alive is a heap entry and a slot).
public protocol EpollTimerHandler: AnyObject {
    /// The deadline came (on the loop).
    func timerFired(on loop: EpollEventLoop)
    /// The loop stops before the deadline (on the loop, as it stops).
    func timerAbandoned(on loop: EpollEventLoop)
}

extension EpollTimerHandler {
    public func timerAbandoned(on loop: EpollEventLoop) {}
}

/// A timer of one `EpollEventLoop`, to cancel it with: a slot in the loop's timer table and
/// the timer's sequence number. Once the timer fired or was cancelled the slot is empty or
/// holds another timer, so an old id cancels nothing.
public struct EpollTimerID: Sendable, Hashable {
    let slot: UInt32
    let sequence: UInt32
}
#endif
