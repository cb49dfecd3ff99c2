import Authorization
import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

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

    init(
        ledger: any SessionAuthority, pubsub: (any PubSubEngine)?, logger: Logger, connectTimeout: TimeAmount,
        maximumPacketSize: Int, topicAliasMaximum: UInt16 = 0, receiveMaximum: UInt16 = 65_535,
        maximumKeepAlive: UInt16? = nil, maximumOutboundInflight: Int = 100, authority: (any IdentityAuthority)? = nil,
        operations: FrontOperations = FrontOperations(), closeGrace: TimeAmount = .seconds(10),
        outboundHighWaterBytes: Int = 1 << 20, slowConsumerTimeout: TimeAmount = .seconds(60),
        access: any AccessControl = OpenAccess(), subscribeLimits: SubscribeScreen.Limits = SubscribeScreen.Limits()
    ) {
        self.access = AccessBox(access)
        self.subscribeLimits = subscribeLimits
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
            maximumKeepAlive: maximumKeepAlive, maximumOutboundInflight: maximumOutboundInflight))
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
