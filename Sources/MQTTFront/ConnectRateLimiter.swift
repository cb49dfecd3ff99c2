import NIOCore
import SessionLedger
import Synchronization

/// CONNECTs per session name (`limits.connectsPerSecondPerSession`, Event Grid's 1 a second):
/// a client that reconnects in a loop gets CONNACK 0x9F instead of a ledger claim, a takeover
/// and a broker attach each time. Shared by every connection of a front.
///
/// One token bucket per (authentication name, session name): `rate` a second, a burst of
/// one second's worth (at least one). With the default of 1, a CONNECT less than a second
/// after the last admitted one for the same name is refused; refused CONNECTs spend nothing,
/// so a client that waits a second gets in. Keyed by the pair, not the session name alone:
/// another client hammering someone else's session name (refused by R6 anyway) must not use
/// up its owner's budget.
///
/// A bucket that has refilled remembers nothing and is dropped: the table holds only the
/// names CONNECTed within the last `capacity / rate` seconds (swept whenever it doubles), so
/// a stream of fresh names cannot grow it without bound.
final class ConnectRateLimiter: Sendable {
    private struct Table {
        var buckets: [String: TokenBucket] = [:]
        /// Sweep when the table reaches this size.
        var sweepAt = ConnectRateLimiter.smallestSweep
    }

    static let smallestSweep = 1_024

    let rate: Int
    private let table = Mutex(Table())

    /// `rate`: CONNECTs a second per name; above 0.
    init(rate: Int) {
        precondition(rate > 0, "a connect rate of 0 is no limiter")
        self.rate = rate
    }

    /// Whether a CONNECT of `authenticationName` for `sessionName` may proceed at `now`.
    func admit(_ authenticationName: AuthenticationName, _ sessionName: SessionName, now: NIODeadline = .now()) -> Bool {
        let key = "\(authenticationName.key)\u{0}\(sessionName.value)"
        return table.withLock { table in
            if table.buckets.count >= table.sweepAt {
                table.buckets = table.buckets.filter { !$0.value.isFull(at: now) }
                table.sweepAt = max(Self.smallestSweep, table.buckets.count * 2)
            }
            var bucket = table.buckets[key] ?? TokenBucket(rate: Double(rate), capacity: Double(rate), now: now)
            let admitted = bucket.take(now: now)
            table.buckets[key] = bucket
            return admitted
        }
    }

    /// Names remembered now (tests).
    var count: Int { table.withLock { $0.buckets.count } }
}
