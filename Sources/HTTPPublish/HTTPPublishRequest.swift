import Authorization
import Foundation
import MQTTCodec
import NIOCore

/// Event Grid's HTTP publish request read into one MQTT PUBLISH: the `topic` query parameter,
/// the `mqtt-*` headers and `content-type`, the body as the payload. Pure: no I/O.
///
/// | header | MQTT |
/// |---|---|
/// | `mqtt-qos` | QoS, `0` or `1` (default 1) |
/// | `mqtt-retain` | RETAIN: `0`/`1`/`true`/`false` (default 0) |
/// | `mqtt-response-topic` | Response Topic (a topic name, no wildcards) |
/// | `mqtt-correlation-data` | Correlation Data, base64 |
/// | `mqtt-user-properties` | User Properties: a JSON array of `{"name": ..., "value": ...}` |
/// | `mqtt-message-expiry` | Message Expiry Interval, seconds (0-4294967295) |
/// | `content-type` | Content Type |
public struct HTTPPublishRequest: Sendable {
    public var publish: MQTTPublish

    /// A request that cannot be one PUBLISH: `what` names the part (`topic`, a header name),
    /// `why` says what is wrong with it. Answered 400.
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public var what: String
        public var why: String
        public var description: String { "\(what): \(why)" }
        init(_ what: String, _ why: String) {
            self.what = what
            self.why = why
        }
    }

    /// `header(name)`: the value of a request header (names in lower case), nil when absent.
    public init(topic: String?, header: (String) -> String?, body: ByteBuffer) throws(Invalid) {
        guard let topic, !topic.isEmpty else { throw Invalid("topic", "the query parameter topic=T is missing or empty") }
        guard Self.isTopicName(topic) else {
            throw Invalid("topic", "'\(topic)' is not an MQTT topic name (no + or #, no U+0000, at most 65535 bytes)")
        }
        var qos = MQTTQoS.atLeastOnce
        if let text = header("mqtt-qos") {
            switch text.trimmingCharacters(in: .whitespaces) {
            case "0": qos = .atMostOnce
            case "1": qos = .atLeastOnce
            default: throw Invalid("mqtt-qos", "'\(text)' is not 0 or 1")
            }
        }
        var retain = false
        if let text = header("mqtt-retain") {
            switch text.trimmingCharacters(in: .whitespaces).lowercased() {
            case "0", "false": retain = false
            case "1", "true": retain = true
            default: throw Invalid("mqtt-retain", "'\(text)' is not 0, 1, true or false")
            }
        }
        var properties = MQTTProperties()
        if let text = header("mqtt-response-topic") {
            guard Self.isTopicName(text) else { throw Invalid("mqtt-response-topic", "'\(text)' is not an MQTT topic name") }
            properties.responseTopic = text
        }
        if let text = header("mqtt-correlation-data") {
            guard let bytes = Data(base64Encoded: text.trimmingCharacters(in: .whitespaces)) else {
                throw Invalid("mqtt-correlation-data", "not base64")
            }
            properties.correlationData = ByteBuffer(bytes: bytes)
        }
        if let text = header("mqtt-user-properties") {
            properties.userProperties = try Self.userProperties(text)
        }
        if let text = header("mqtt-message-expiry") {
            guard let seconds = UInt32(text.trimmingCharacters(in: .whitespaces)) else {
                throw Invalid("mqtt-message-expiry", "'\(text)' is not a number of seconds (0-4294967295)")
            }
            properties.messageExpiryInterval = seconds
        }
        if let text = header("content-type"), !text.isEmpty {
            properties.contentType = text
        }
        publish = MQTTPublish(
            topicName: topic, payload: body, qos: qos, retain: retain,
            packetIdentifier: qos == .atMostOnce ? nil : 1, properties: properties)
    }

    /// A topic name a PUBLISH may carry (MQTT 5.0 4.7.3): not empty, no wildcards, no U+0000.
    static func isTopicName(_ topic: String) -> Bool {
        topic.utf8.count <= 65_535 && MQTTTopicFilter.isValidTopicName(topic)
    }

    private struct UserProperty: Decodable {
        var name: String
        var value: String
    }

    static func userProperties(_ text: String) throws(Invalid) -> [MQTTUserProperty] {
        do {
            return try JSONDecoder().decode([UserProperty].self, from: Data(text.utf8))
                .map { MQTTUserProperty(name: $0.name, value: $0.value) }
        } catch {
            throw Invalid("mqtt-user-properties", "not a JSON array of {\"name\": ..., \"value\": ...} objects")
        }
    }
}

/// Who an HTTP publish says it is: its `Authorization` header.
public enum HTTPCredentials: Sendable, Equatable {
    case none
    /// `Basic base64(user:password)`.
    case basic(username: String, password: String)
    /// `Bearer TOKEN`.
    case bearer(String)

    /// nil: a header that is neither (answered 401).
    public init?(authorization: String?) {
        guard let authorization else {
            self = .none
            return
        }
        let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2 else { return nil }
        let value = parts[1].trimmingCharacters(in: .whitespaces)
        switch parts[0].lowercased() {
        case "basic":
            guard let decoded = Data(base64Encoded: value), let text = String(data: decoded, encoding: .utf8),
                let colon = text.firstIndex(of: ":")
            else { return nil }
            self = .basic(username: String(text[..<colon]), password: String(text[text.index(after: colon)...]))
        case "bearer":
            guard !value.isEmpty else { return nil }
            self = .bearer(value)
        default:
            return nil
        }
    }
}
