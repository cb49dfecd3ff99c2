import MQTTCodec
import NIOCore

/// The limits and timings a connection takes when it starts (README "Limits"). A reload
/// (SIGHUP) replaces them whole: connections made after it get the new ones, those open
/// keep the ones they started with.
final class FrontTunables: Sendable {
    let machineSettings: Boxed<ConnectionStateMachine.Settings>
    let connectTimeout: TimeAmount
    /// See `MQTTFrontConfiguration.closeGrace`.
    let closeGrace: TimeAmount
    /// See `MQTTFrontConfiguration.outboundHighWaterBytes` and `slowConsumerTimeout`.
    let outboundHighWaterBytes: Int
    let slowConsumerTimeout: TimeAmount
    let maximumPacketSize: Int
    /// The front's checks of SUBSCRIBE filters.
    let subscribeLimits: SubscribeLimits
    /// CONNECTs per session name (`limits.connectsPerSecondPerSession`); nil: no limit.
    let connectRate: ConnectRateLimiter?
    /// Publish rates of one connection (`limits.publishMessagesPerSecond`,
    /// `limits.publishBytesPerSecond`); 0: no limit.
    let publishMessagesPerSecond: Int
    let publishBytesPerSecond: Int
    /// Connections open on every listener together (`limits.maxConnections`).
    let maximumConnections: Int

    /// `brokerCapabilities`: what the pub/sub engine announces (nil: there is none).
    /// `previous`: the tunables these replace; a connect-rate table of the same rate is kept,
    /// so that a reload does not hand every session name a fresh budget.
    init(
        _ configuration: MQTTFrontConfiguration, brokerCapabilities: MQTTProperties?, previous: FrontTunables? = nil
    ) {
        connectTimeout = configuration.connectTimeout
        closeGrace = configuration.closeGrace
        outboundHighWaterBytes = configuration.outboundHighWaterBytes
        slowConsumerTimeout = configuration.slowConsumerTimeout
        maximumPacketSize = configuration.maximumPacketSize
        subscribeLimits = SubscribeLimits(
            maxFiltersPerSubscribe: configuration.maxFiltersPerSubscribe, maxTopicBytes: configuration.maximumTopicBytes,
            maxTopicLevels: configuration.maximumTopicLevels)
        let rate = configuration.connectsPerSecondPerSession
        if rate <= 0 {
            connectRate = nil
        } else if let kept = previous?.connectRate, kept.rate == rate {
            connectRate = kept
        } else {
            connectRate = ConnectRateLimiter(rate: rate)
        }
        publishMessagesPerSecond = max(0, configuration.publishMessagesPerSecond)
        publishBytesPerSecond = max(0, configuration.publishBytesPerSecond)
        maximumConnections = max(1, configuration.maximumConnections ?? Int.max)
        var capabilities = brokerCapabilities ?? FrontServices.noBroker
        if configuration.maximumPacketSize < MQTTDecoder.largestPacketSize {
            capabilities.append(.maximumPacketSize(UInt32(configuration.maximumPacketSize)))
        }
        machineSettings = Boxed(ConnectionStateMachine.Settings(
            capabilities: capabilities, topicAliasMaximum: configuration.topicAliasMaximum,
            receiveMaximum: configuration.receiveMaximum, maximumKeepAlive: configuration.maximumKeepAlive,
            maximumOutboundInflight: configuration.maximumOutboundInflight,
            maximumTopicBytes: configuration.maximumTopicBytes, maximumTopicLevels: configuration.maximumTopicLevels,
            maximumUserPropertyBytes: configuration.maximumUserPropertyBytes,
            maximumPropertyValueBytes: configuration.maximumPropertyValueBytes))
    }
}
