/// The limits the front enforces, named by their key (README "Limits"): the label of
/// `custody_limit_exceeded_total{limit}` and of the rate-limited "limit exceeded" log line, so
/// that an operator who sees one finds the setting to change under the same name.
public enum FrontLimit: String, Sendable, CaseIterable {
    /// `limits.maxPacketBytes`: a packet larger than the maximum packet size.
    case maxPacketBytes
    /// `limits.maxTopicBytes`: a topic name (PUBLISH, will) longer than this many bytes.
    case maxTopicBytes
    /// `limits.maxTopicLevels`: a topic name (PUBLISH, will) of more levels than this.
    case maxTopicLevels
    /// `limits.maxUserPropertyBytes`: the User Properties of one packet, all together.
    case maxUserPropertyBytes
    /// `limits.maxPropertyValueBytes`: one Response Topic, Correlation Data or Content Type.
    case maxPropertyValueBytes
    /// `limits.receiveMaximum`: one more unacknowledged QoS 1/2 PUBLISH than announced.
    case receiveMaximum
    /// `limits.topicAliasMaximum`: a Topic Alias above the one announced.
    case topicAliasMaximum
    /// `limits.connectsPerSecondPerSession`: a CONNECT too soon after the last one.
    case connectsPerSecondPerSession
    /// `limits.publishMessagesPerSecond`: reads paused until the budget refills.
    case publishMessagesPerSecond
    /// `limits.publishBytesPerSecond`: reads paused until the budget refills.
    case publishBytesPerSecond
    /// `limits.maxConnections`: a connection past the maximum, closed at once.
    case maxConnections
    /// `connectTimeoutSeconds`: no CONNECT in time.
    case connectTimeoutSeconds
}
