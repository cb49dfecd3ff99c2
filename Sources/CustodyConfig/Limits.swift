/// What one client may take of the broker (`limits:` in the file; README "Limits"). Each
/// key has a flag of the same meaning; both apply to connections made after start.
public struct LimitsConfiguration: Sendable, Equatable {
    /// Most QoS 1/2 messages in flight to one client (the smaller of this and its Receive
    /// Maximum): `limits.maxOutboundInflight`, `--max-outbound-inflight`.
    public var maxOutboundInflight = 100
    /// Bytes waiting to be written to one client above which QoS 0 messages to it are
    /// dropped: `limits.outboundHighWaterBytes`, `--outbound-high-water-bytes`.
    public var outboundHighWaterBytes = 1 << 20
    /// How long a client may stay above the high-water mark before it is disconnected (v5
    /// DISCONNECT 0x97; ledger `disconnected(quotaExceeded)`): `limits.slowConsumerSeconds`,
    /// `--slow-consumer-seconds`.
    public var slowConsumerSeconds = 60
    /// The largest packet a client may send, announced as Maximum Packet Size in v5 CONNACKs;
    /// a larger one closes its connection (v5 DISCONNECT 0x95; ledger `disconnected(clientError)`):
    /// `limits.maxPacketBytes`, `--max-packet-bytes`.
    public var maxPacketBytes = 512 << 10
    /// Filters one SUBSCRIBE may carry; those past it get SUBACK 0x97 Quota exceeded (3.1.1:
    /// 0x80): `limits.maxFiltersPerSubscribe`, `--max-filters-per-subscribe`.
    public var maxFiltersPerSubscribe = 10

    /// Topic filters one session may hold; a new one past it gets SUBACK 0x97 (3.1.1: 0x80):
    /// `limits.maxSubscriptionsPerSession`, `--max-subscriptions-per-session`.
    public var maxSubscriptionsPerSession = 50
    /// Largest retained payload, bytes; a larger retained PUBLISH is not retained (v5 QoS 1/2:
    /// refused with 0x97): `limits.maxRetainedBytes`, `--max-retained-bytes`.
    public var maxRetainedBytes = 64 << 10
    /// Most topics with a retained message; a retained PUBLISH to a new topic past it is not
    /// retained (v5 QoS 1/2: refused with 0x97): `limits.maxRetainedMessages`, `--max-retained-messages`.
    public var maxRetainedMessages = 100_000
    /// Most messages one session's queue holds (offline, or behind its in-flight window):
    /// `limits.queueMaxMessages`, `--queue-max-messages`.
    public var queueMaxMessages = 1_000
    /// Most payload bytes one session's queue holds: `limits.queueMaxBytes`, `--queue-max-bytes`.
    public var queueMaxBytes = 16 << 20
    /// What a full session queue does with one more message: `limits.queueOverflow`, `--queue-overflow`.
    public var queueOverflow = QueueOverflow.dropOldest

    /// `dropOldest`: the oldest queued messages go (counted as dropped, `queue_full`);
    /// `endSession`: the session ends as Event Grid ends it (ledger `expired(sessionOverflow)`,
    /// a connected client gets DISCONNECT 0x97).
    public enum QueueOverflow: String, Sendable, CaseIterable {
        case dropOldest
        case endSession
    }

    public static let maxSubscriptionsPerSessionRange = 1...100_000
    public static let maxRetainedBytesRange = 1...268_435_455
    public static let maxRetainedMessagesRange = 1...100_000_000
    public static let queueMaxMessagesRange = 1...100_000_000
    public static let queueMaxBytesRange = 1_024...(1 << 40)

    /// Longest topic name of a PUBLISH or a will, in UTF-8 bytes (Event Grid's 256): v5 QoS 1/2
    /// PUBACK/PUBREC 0x90 (message dropped), v5 QoS 0 DISCONNECT 0x90, 3.1.1 closed; a will:
    /// v5 CONNACK 0x90, 3.1.1 closed. `limits.maxTopicBytes`, `--max-topic-bytes`.
    public var maxTopicBytes = 256
    /// Most levels of such a topic name (Event Grid's 15), refused alike:
    /// `limits.maxTopicLevels`, `--max-topic-levels`.
    public var maxTopicLevels = 15
    /// Most bytes of User Properties (names and values) in one packet; more: v5 DISCONNECT 0x95
    /// (CONNACK 0x95 on a CONNECT). `limits.maxUserPropertyBytes`, `--max-user-property-bytes`.
    public var maxUserPropertyBytes = 32 << 10
    /// Longest Response Topic, Correlation Data or Content Type, refused alike:
    /// `limits.maxPropertyValueBytes`, `--max-property-value-bytes`.
    public var maxPropertyValueBytes = 256
    /// QoS 1/2 PUBLISHes a client may have unacknowledged, announced as Receive Maximum in v5
    /// CONNACKs; one more: DISCONNECT 0x93. `limits.receiveMaximum`, `--receive-maximum`.
    public var receiveMaximum = 100
    /// Topic Aliases a client may set (announced in v5 CONNACKs; above: DISCONNECT 0x94), and the
    /// most the server uses towards a client that announced its own.
    /// `limits.topicAliasMaximum`, `--topic-alias-maximum`.
    public var topicAliasMaximum = 10
    /// CONNECTs a second per session name, as Event Grid (0: no limit); more: v5 CONNACK 0x9F,
    /// 3.1.1 return code 3, ledger `rejected(quotaExceeded)`.
    /// `limits.connectsPerSecondPerSession`, `--connects-per-second-per-session`.
    public var connectsPerSecondPerSession = 1
    /// PUBLISH messages a second one connection may send (0: no limit; Event Grid: 100); above
    /// it its socket is not read until its budget refills. `limits.publishMessagesPerSecond`,
    /// `--publish-messages-per-second`.
    public var publishMessagesPerSecond = 0
    /// PUBLISH bytes (topic and payload) a second, alike (0: no limit; Event Grid: 1 MB).
    /// `limits.publishBytesPerSecond`, `--publish-bytes-per-second`.
    public var publishBytesPerSecond = 0
    /// Connections open at once, every listener together; one more is closed as soon as it is
    /// accepted. nil: the descriptor limit (RLIMIT_NOFILE) less a reserve, decided at start.
    /// `limits.maxConnections`, `--max-connections`.
    public var maxConnections: Int?

    public static let maxOutboundInflightRange = 1...65_535
    public static let outboundHighWaterBytesRange = 16_384...(1 << 30)
    public static let slowConsumerSecondsRange = 1...86_400
    /// From a small CONNECT to MQTT's own largest packet (a 4-byte remaining length).
    public static let maxPacketBytesRange = 1_024...268_435_460
    public static let maxFiltersPerSubscribeRange = 1...65_535
    public static let maxTopicBytesRange = 1...65_535
    /// A topic of 65,535 bytes has at most 32,768 levels.
    public static let maxTopicLevelsRange = 1...32_768
    public static let maxUserPropertyBytesRange = 0...268_435_455
    public static let maxPropertyValueBytesRange = 1...65_535
    public static let receiveMaximumRange = 1...65_535
    public static let topicAliasMaximumRange = 0...65_535
    public static let connectsPerSecondPerSessionRange = 0...1_000
    public static let publishMessagesPerSecondRange = 0...1_000_000
    public static let publishBytesPerSecondRange = 0...(1 << 30)
    public static let maxConnectionsRange = 1...10_000_000

    public init() {}
}
