import CoreMetrics
import MQTTCodec
import SessionLedger
import Synchronization

/// What the MQTT front counts, through swift-metrics: connections open, CONNECTs by outcome
/// and reason code, PUBLISH packets in and out by QoS, MQTT bytes in and out.
///
/// Every handle is made once here: the per-packet calls are an array index and an atomic
/// add, never a lookup by label. CONNECT counters are made on first use of a reason code
/// (a small fixed set) and kept.
public final class FrontMetrics: Sendable {
    public static let connectionsOpenLabel = "custody_mqtt_connections_open"
    public static let connectsLabel = "custody_mqtt_connects_total"
    public static let messagesReceivedLabel = "custody_mqtt_messages_received_total"
    public static let messagesSentLabel = "custody_mqtt_messages_sent_total"
    public static let bytesReceivedLabel = "custody_mqtt_bytes_received_total"
    public static let bytesSentLabel = "custody_mqtt_bytes_sent_total"

    private let factory: any MetricsFactory
    let connectionsOpen: Meter
    let messagesReceived: [CoreMetrics.Counter]
    let messagesSent: [CoreMetrics.Counter]
    let bytesReceived: CoreMetrics.Counter
    let bytesSent: CoreMetrics.Counter
    /// QoS 0 messages not sent to a client above the outbound high-water mark.
    let messagesDroppedSlowConsumer: CoreMetrics.Counter
    private let connects = Mutex<[UInt16: CoreMetrics.Counter]>([:])
    /// `custody_limit_exceeded_total{limit}` and `custody_authorization_denied_total{action}`,
    /// made on first use of a label value (a small fixed set) and kept.
    private let labelled = Mutex<[String: CoreMetrics.Counter]>([:])
    public static let limitExceededLabel = "custody_limit_exceeded_total"
    public static let authorizationDeniedLabel = "custody_authorization_denied_total"

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        connectionsOpen = Meter(label: Self.connectionsOpenLabel, factory: factory)
        connectionsOpen.set(0)
        messagesReceived = (0...2).map {
            CoreMetrics.Counter(label: Self.messagesReceivedLabel, dimensions: [("qos", "\($0)")], factory: factory)
        }
        messagesSent = (0...2).map {
            CoreMetrics.Counter(label: Self.messagesSentLabel, dimensions: [("qos", "\($0)")], factory: factory)
        }
        bytesReceived = CoreMetrics.Counter(label: Self.bytesReceivedLabel, factory: factory)
        bytesSent = CoreMetrics.Counter(label: Self.bytesSentLabel, factory: factory)
        messagesDroppedSlowConsumer = CoreMetrics.Counter(
            label: "custody_broker_messages_dropped_total", dimensions: [("reason", "slow_consumer")], factory: factory)
    }

    /// A CONNECT answered: granted (0x00) or refused with `reasonCode` (v5 numbering, also for
    /// 3.1.1 clients); nil when the connection closed without a CONNACK (malformed CONNECT).
    public func connect(granted: Bool, reasonCode: UInt8?) {
        let key = granted ? 0 : UInt16(reasonCode ?? 0) | 0x100 | (reasonCode == nil ? 0x200 : 0)
        let counter = connects.withLock { table in
            if let counter = table[key] { return counter }
            let code = reasonCode.map { MQTTReasonCode(rawValue: $0).hexCode } ?? "none"
            let counter = CoreMetrics.Counter(
                label: Self.connectsLabel,
                dimensions: [("outcome", granted ? "granted" : "rejected"), ("reason_code", granted ? "0x00" : code)],
                factory: factory)
            table[key] = counter
            return counter
        }
        counter.increment()
    }

    /// A limit (README "Limits", the key under `limits:`) refused or cut something.
    public func limitExceeded(_ limit: String, by count: Int = 1) {
        counter(Self.limitExceededLabel, "limit", limit).increment(by: count)
    }

    /// An authorization denial: `action` is publish, subscribe or will.
    public func authorizationDenied(_ action: String, by count: Int = 1) {
        counter(Self.authorizationDeniedLabel, "action", action).increment(by: count)
    }

    /// Subscriptions removed because the rules no longer allow them (a reload).
    public func subscriptionsRevoked(by count: Int) {
        counter(Self.subscriptionsRevokedLabel, "reason", "reload").increment(by: count)
    }
    public static let subscriptionsRevokedLabel = "custody_authorization_subscriptions_revoked_total"

    private func counter(_ label: String, _ dimension: String, _ value: String) -> CoreMetrics.Counter {
        labelled.withLock { table in
            let key = "\(label)\u{0}\(value)"
            if let counter = table[key] { return counter }
            let counter = CoreMetrics.Counter(label: label, dimensions: [(dimension, value)], factory: factory)
            table[key] = counter
            return counter
        }
    }
}

/// What operators add to the front: metrics, and who may read the server's own topics.
public struct FrontOperations: Sendable {
    /// nil: nothing is counted.
    public var metrics: FrontMetrics?
    /// Authentication names (compared case-insensitively) whose connections may subscribe to
    /// `$custody/...` (lifecycle events); everyone else gets SUBACK 0x87 for such filters.
    public var serverTopicReaders: [AuthenticationName]
    /// R4 when the replaced connection is not one of this front's (another front, such as the
    /// ledger socket's peers, holds it): told so it can close it. nil: no other front.
    public var takenOverElsewhere: (@Sendable (ConnectionNumber, SessionName) -> Void)?

    public init(
        metrics: FrontMetrics? = nil, serverTopicReaders: [AuthenticationName] = [],
        takenOverElsewhere: (@Sendable (ConnectionNumber, SessionName) -> Void)? = nil
    ) {
        self.metrics = metrics
        self.serverTopicReaders = serverTopicReaders
        self.takenOverElsewhere = takenOverElsewhere
    }

    func readsServerTopics(_ client: AuthenticationName) -> Bool {
        serverTopicReaders.contains { $0.key == client.key }
    }
}
