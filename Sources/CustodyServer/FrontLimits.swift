import CustodyConfig
import Foundation
import MQTTFront

#if canImport(Glibc)
import Glibc
#endif

// The `limits:` the MQTT front enforces (README "Limits"), handed to its configuration; and the
// default connection limit, which only the executable can know (its own descriptor limit).

extension LimitsConfiguration {
    /// Descriptors kept for what is not a client connection: standard streams, the two LMDB
    /// environments (data and lock files), the listeners, the event loops' epoll and eventfd
    /// descriptors, the metrics endpoint and its scrapers, a TLS file read at a reload.
    static let descriptorReserve = 64

    /// `maxConnections` when it is not set: the soft RLIMIT_NOFILE less `descriptorReserve` (or
    /// less a quarter of the limit, when that is smaller), so that accepting stops on this limit,
    /// with a line and a count, before the process runs out of descriptors. nil: no descriptor
    /// limit (RLIM_INFINITY, all ones).
    static func defaultMaxConnections() -> (connections: Int, descriptors: Int)? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        let descriptors = Int(clamping: limit.rlim_cur)
        let reserve = min(descriptorReserve, descriptors / 4)
        return (min(maxConnectionsRange.upperBound, max(1, descriptors - reserve)), descriptors)
    }

    /// The front's share of the limits (the rest are set where they were before).
    func apply(to front: inout MQTTFrontConfiguration) {
        front.maximumTopicBytes = maxTopicBytes
        front.maximumTopicLevels = maxTopicLevels
        front.maximumUserPropertyBytes = maxUserPropertyBytes
        front.maximumPropertyValueBytes = maxPropertyValueBytes
        front.receiveMaximum = UInt16(receiveMaximum)
        front.topicAliasMaximum = UInt16(topicAliasMaximum)
        front.connectsPerSecondPerSession = connectsPerSecondPerSession
        front.publishMessagesPerSecond = publishMessagesPerSecond
        front.publishBytesPerSecond = publishBytesPerSecond
        front.maximumConnections = maxConnections ?? Self.defaultMaxConnections()?.connections
        front.maxFiltersPerSubscribe = maxFiltersPerSubscribe
    }
}

extension CustodyConfiguration {
    /// The front's configuration: listeners and operations as given, the rest (timeouts,
    /// announced maxima, `limits:`) from this configuration. A reload builds it again for the
    /// connections made after it.
    func frontConfiguration(listeners: [FrontListener], operations: FrontOperations) -> MQTTFrontConfiguration {
        var front = MQTTFrontConfiguration(listeners: listeners, connectTimeout: .seconds(Int64(connectTimeoutSeconds)))
        front.maximumKeepAlive = maxKeepAliveSeconds.map { UInt16($0) }
        front.maximumOutboundInflight = limits.maxOutboundInflight
        front.maximumPacketSize = limits.maxPacketBytes
        front.outboundHighWaterBytes = limits.outboundHighWaterBytes
        front.slowConsumerTimeout = .seconds(Int64(limits.slowConsumerSeconds))
        limits.apply(to: &front)
        front.operations = operations
        return front
    }
}

/// The start-up line that says what a client may take (the connection limit is worked out at start).
func limitsLine(_ limits: LimitsConfiguration, front: MQTTFrontConfiguration) -> String {
    var connections = front.maximumConnections.map { "\($0)" } ?? "none"
    if limits.maxConnections == nil, let (_, descriptors) = LimitsConfiguration.defaultMaxConnections() {
        connections += " (descriptor limit \(descriptors))"
    }
    return "custody: limits max_connections=\(connections) connects_per_second_per_session=\(limits.connectsPerSecondPerSession)"
        + " publish_messages_per_second=\(limits.publishMessagesPerSecond) publish_bytes_per_second=\(limits.publishBytesPerSecond)"
}
