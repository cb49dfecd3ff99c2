import Synchronization

/// A clock the test moves by hand, in µs since the Unix epoch; read from any thread (the
/// ledger's writer, the broker's timers).
public final class ManualClock: Sendable {
    private let current: Mutex<Int64>

    public init(start: Int64 = 1_750_000_000_000_000) { current = Mutex(start) }

    public var now: Int64 { current.withLock { $0 } }

    public func advance(seconds: Int64) { advance(microseconds: seconds * 1_000_000) }
    public func advance(milliseconds: Int64) { advance(microseconds: milliseconds * 1_000) }
    public func advance(microseconds: Int64) { current.withLock { $0 += microseconds } }
    public func set(_ micros: Int64) { current.withLock { $0 = micros } }

    /// What the ledger and the broker take as their clock.
    public var ledgerClock: @Sendable () -> Int64 { { [self] in now } }
}

/// One second in the clock's unit.
public let second: Int64 = 1_000_000
