import Authorization
import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger
import Synchronization

/// What every connection shares: the ledger, the pub/sub core, the registry, the log.
final class FrontServices: Sendable {
    let ledger: any SessionAuthority
    let pubsub: (any PubSubEngine)?
    let registry = ConnectionRegistry()
    let logger: Logger
    let machineSettings: Boxed<ConnectionStateMachine.Settings>
    let connectTimeout: TimeAmount
    /// See `MQTTFrontConfiguration.closeGrace`.
    let closeGrace: TimeAmount
    /// See `MQTTFrontConfiguration.outboundHighWaterBytes` and `slowConsumerTimeout`.
    let outboundHighWaterBytes: Int
    let slowConsumerTimeout: TimeAmount
    let maximumPacketSize: Int
    /// Who a CONNECT is; nil inside: every Username believed.
    let authority: AuthorityBox
    /// What a client may publish and subscribe to (DESIGN.md §5).
    let access: AccessBox
    /// The front's checks of SUBSCRIBE filters (limits).
    let subscribeLimits: SubscribeScreen.Limits
    /// Metrics and `$custody/...` readers (FrontMetrics.swift); shutdown's one-commit release batch.
    let operations: FrontOperations
    let metrics: FrontMetrics?
    let shutdownBatch = ShutdownBatch()
    /// Rate-limits the lines a client can cause at will (denials, limits exceeded).
    let logThrottle = LogThrottle()
    /// CONNECTs per session name (`limits.connectsPerSecondPerSession`); nil: no limit.
    let connectRate: ConnectRateLimiter?
    /// Publish rates of one connection (`limits.publishMessagesPerSecond`,
    /// `limits.publishBytesPerSecond`); 0: no limit.
    let publishMessagesPerSecond: Int
    let publishBytesPerSecond: Int
    /// Connections open on every listener together (`limits.maxConnections`), and how many are.
    let maximumConnections: Int
    private let openConnections = Atomic<Int>(0)

    init(
        ledger: any SessionAuthority, pubsub: (any PubSubEngine)?, logger: Logger, connectTimeout: TimeAmount,
        maximumPacketSize: Int, topicAliasMaximum: UInt16 = 10, receiveMaximum: UInt16 = 100,
        maximumKeepAlive: UInt16? = nil, maximumOutboundInflight: Int = 100, authority: (any IdentityAuthority)? = nil,
        operations: FrontOperations = FrontOperations(), closeGrace: TimeAmount = .seconds(10),
        outboundHighWaterBytes: Int = 1 << 20, slowConsumerTimeout: TimeAmount = .seconds(60),
        maximumTopicBytes: Int = 256, maximumTopicLevels: Int = 15, maximumUserPropertyBytes: Int = 32 << 10,
        maximumPropertyValueBytes: Int = 256, connectsPerSecondPerSession: Int = 1, publishMessagesPerSecond: Int = 0,
        publishBytesPerSecond: Int = 0, maximumConnections: Int? = nil,
        access: any AccessControl = OpenAccess(), maxFiltersPerSubscribe: Int = 10
    ) {
        self.access = AccessBox(access)
        self.subscribeLimits = SubscribeLimits(
            maxFiltersPerSubscribe: maxFiltersPerSubscribe, maxTopicBytes: maximumTopicBytes,
            maxTopicLevels: maximumTopicLevels)
        self.connectRate = connectsPerSecondPerSession > 0 ? ConnectRateLimiter(rate: connectsPerSecondPerSession) : nil
        self.publishMessagesPerSecond = max(0, publishMessagesPerSecond)
        self.publishBytesPerSecond = max(0, publishBytesPerSecond)
        self.maximumConnections = max(1, maximumConnections ?? Int.max)
        self.closeGrace = closeGrace
        self.outboundHighWaterBytes = outboundHighWaterBytes
        self.slowConsumerTimeout = slowConsumerTimeout
        self.authority = AuthorityBox(authority)
        self.operations = operations
        self.metrics = operations.metrics
        self.ledger = ledger
        self.pubsub = pubsub
        self.logger = logger
        self.connectTimeout = connectTimeout
        self.maximumPacketSize = maximumPacketSize
        var capabilities = pubsub?.capabilities ?? Self.noBroker
        if maximumPacketSize < MQTTDecoder.largestPacketSize {
            capabilities.append(.maximumPacketSize(UInt32(maximumPacketSize)))
        }
        self.machineSettings = Boxed(ConnectionStateMachine.Settings(
            capabilities: capabilities, topicAliasMaximum: topicAliasMaximum, receiveMaximum: receiveMaximum,
            maximumKeepAlive: maximumKeepAlive, maximumOutboundInflight: maximumOutboundInflight,
            maximumTopicBytes: maximumTopicBytes, maximumTopicLevels: maximumTopicLevels,
            maximumUserPropertyBytes: maximumUserPropertyBytes, maximumPropertyValueBytes: maximumPropertyValueBytes))
    }

    /// Counts a new connection in; false (nothing counted) when `maximumConnections` are open.
    func admitConnection() -> Bool {
        let open = openConnections.wrappingAdd(1, ordering: .relaxed).newValue
        guard open > maximumConnections else { return true }
        openConnections.wrappingSubtract(1, ordering: .relaxed)
        return false
    }

    /// An admitted connection closed.
    func connectionClosed() {
        openConnections.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Without a broker nothing is delivered: say so in the CONNACK.
    static let noBroker: MQTTProperties = [
        .retainAvailable(false), .wildcardSubscriptionAvailable(false), .subscriptionIdentifierAvailable(false),
        .sharedSubscriptionAvailable(false),
    ]

    /// A session ended (expired, or ended with its connection): drop its pub/sub state,
    /// unless a newer connection holds the name again already.
    func sessionEnded(_ name: SessionName) {
        // Without state for the name (a clean session is dropped when it detaches) there is
        // nothing to end: no task then.
        guard let pubsub, pubsub.hasDetachedSession(name) else { return }
        let logger = self.logger
        Task {
            do {
                try await pubsub.endSession(name)
            } catch {
                logger.error("broker session end failed", metadata: ["session_name": "\(name)", "error": "\(error)"])
            }
        }
    }
}
