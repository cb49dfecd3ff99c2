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

    public static let maxOutboundInflightRange = 1...65_535
    public static let outboundHighWaterBytesRange = 16_384...(1 << 30)
    public static let slowConsumerSecondsRange = 1...86_400
    /// From a small CONNECT to MQTT's own largest packet (a 4-byte remaining length).
    public static let maxPacketBytesRange = 1_024...268_435_460
    public static let maxFiltersPerSubscribeRange = 1...65_535

    public init() {}
}
