import Broker
import CustodyConfig
import Logging
import MQTTFront
import SessionLedger
import Synchronization

extension CustodyConfiguration {
    /// The broker's share of `limits:` (the front takes the rest).
    var brokerLimits: BrokerLimits {
        BrokerLimits(
            maxSubscriptionsPerSession: limits.maxSubscriptionsPerSession, maxRetainedBytes: limits.maxRetainedBytes,
            maxRetainedMessages: limits.maxRetainedMessages, queueMaxMessages: limits.queueMaxMessages,
            queueMaxBytes: limits.queueMaxBytes,
            queueOverflow: limits.queueOverflow == .endSession ? .endSession : .dropOldest)
    }
}

/// What `custody` does when the broker enforces a limit (`BrokerObserver`): counts it in
/// `custody_limit_exceeded_total{limit}`, writes a log line that a client exceeding the limit at
/// will cannot turn into a flood (`LogThrottle`: a burst per interval and per limit, the next
/// line written says how many were held back), and ends a session whose queue overflowed
/// under `queueOverflow: endSession` through the front (ledger, connection, broker state).
///
/// Made before the front (the broker needs it, the front needs the broker): `attach` hands it
/// the front once there is one.
final class BrokerLimitReporter: BrokerObserver {
    private let metrics: FrontMetrics?
    private let logger: Logger
    private let throttle = LogThrottle()
    private let front = Mutex<MQTTFront?>(nil)

    init(metrics: FrontMetrics?, logger: Logger) {
        self.metrics = metrics
        self.logger = logger
    }

    func attach(_ front: MQTTFront) {
        self.front.withLock { $0 = front }
    }

    func limitExceeded(_ limit: BrokerLimit, session: SessionName, count: Int) {
        metrics?.limitExceeded(limit.rawValue, by: count)
        log(limit.rawValue, "limit exceeded", ["limit": "\(limit.rawValue)", "session_name": "\(session)", "count": "\(count)"])
    }

    func queueOverflowed(_ session: SessionName) {
        log("queueOverflow", "session queue overflowed, ending the session", [
            "session_name": "\(session)", "policy": "endSession",
        ])
        // Nothing to end it with before the front exists (start-up): the broker keeps queueing
        // nothing for it, and the session ends when it expires.
        guard let front = front.withLock({ $0 }) else { return }
        Task { await front.endOverflowedSession(session) }
    }

    private func log(_ kind: String, _ message: Logger.Message, _ metadata: Logger.Metadata) {
        let (write, suppressed) = throttle.admit(kind)
        guard write else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        logger.notice(message, metadata: metadata)
    }
}
