import LedgerCore

/// What the broker tells whoever runs it about the limits it enforces. The broker counts and
/// logs nothing itself and knows no front: the executable chooses what stands behind this
/// (metrics, rate-limited log lines, ending a session through the ledger).
///
/// Called outside the broker's lock, from whichever thread made the decision (a publisher's,
/// the store's writer thread): do not block, and hop elsewhere for anything slow. The broker
/// may call back in.
public protocol BrokerObserver: AnyObject, Sendable {
    /// `limit` refused or cut something of `session` `count` times (a SUBSCRIBE filter, a
    /// retained message, a queued message dropped). One call per decision, not per message:
    /// a publish that overflows many queues makes one call per session.
    func limitExceeded(_ limit: BrokerLimit, session: SessionName, count: Int)

    /// With `QueueOverflowPolicy.endSession`: `session`'s queue overflowed. The broker queues
    /// nothing more for it; the observer should record the end (`expired(sessionOverflow)`),
    /// disconnect its client if connected, and then call `Broker.endSession`. Called once per
    /// session state.
    func queueOverflowed(_ session: SessionName)
}
