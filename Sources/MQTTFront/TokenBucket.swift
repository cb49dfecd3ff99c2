import NIOCore

/// A token bucket: `rate` tokens a second, at most `capacity` kept (the burst). Pure: the
/// caller gives the time, so that tests decide it.
///
/// Two ways to spend: `take` refuses when there is not enough (a CONNECT is refused, nothing
/// is owed); `charge` always spends and may leave a debt (a PUBLISH already read cannot be
/// unread: the connection pays by not being read until the debt is paid).
struct TokenBucket: Sendable {
    /// Tokens a second; above 0.
    let rate: Double
    /// Most tokens kept; at least 1.
    let capacity: Double
    /// May be below 0 after `charge`: a debt.
    private(set) var tokens: Double
    private var updated: NIODeadline

    /// Full at `now`.
    init(rate: Double, capacity: Double, now: NIODeadline) {
        precondition(rate > 0, "a bucket that never refills")
        self.rate = rate
        self.capacity = max(1, capacity)
        self.tokens = self.capacity
        self.updated = now
    }

    private mutating func refill(_ now: NIODeadline) {
        guard now > updated else { return }
        let seconds = Double((now - updated).nanoseconds) / 1e9
        tokens = min(capacity, tokens + seconds * rate)
        updated = now
    }

    /// Spends `count` tokens if there are that many; false (nothing spent) otherwise.
    mutating func take(_ count: Double = 1, now: NIODeadline) -> Bool {
        refill(now)
        guard tokens >= count else { return false }
        tokens -= count
        return true
    }

    /// Spends `count` tokens, into debt if need be.
    mutating func charge(_ count: Double, now: NIODeadline) {
        refill(now)
        tokens -= count
    }

    /// True when the bucket is at `capacity` at `now`: it remembers nothing, and can be forgotten.
    func isFull(at now: NIODeadline) -> Bool {
        var copy = self
        copy.refill(now)
        return copy.tokens >= capacity
    }

    /// How long until the debt is paid (tokens back to 0); zero when there is none.
    func timeUntilPaid(at now: NIODeadline) -> TimeAmount {
        var copy = self
        copy.refill(now)
        guard copy.tokens < 0 else { return .zero }
        // Rounded up: woken a little early, the bucket would still be in debt.
        return .nanoseconds(Int64((-copy.tokens / rate * 1e9).rounded(.up)) + 1)
    }
}
