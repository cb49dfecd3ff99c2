import Foundation
import LedgerCore
import MQTTCodec
import NIOCore

/// CloudEvents 1.0 (JSON event format) as Event Grid routes MQTT: a published message is
/// `MQTT.EventPublished` (Event Grid's routing schema), a session's lifecycle event is
/// `Microsoft.EventGrid.MQTTClientSession*` with Event Grid's data fields. Written with
/// LedgerCore's `JSONObject`: the event is one JSON object, made once when the message is
/// accepted and kept as is in the outbox, so that every attempt sends the same `id`.
public enum CloudEvents {
    public static let publishedType = "MQTT.EventPublished"
    public static let structuredContentType = "application/cloudevents+json"
    public static let batchContentType = "application/cloudevents-batch+json"

    /// What a route adds to each event: extension attributes (names already checked:
    /// lower-case letters and digits).
    public struct Extensions: Sendable {
        public var attributes: [(name: String, value: String)]
        public init(_ attributes: [(name: String, value: String)] = []) { self.attributes = attributes }
    }

    /// A message accepted from `publisher`. `id`: unique per event (kept across retries).
    public static func published(
        _ publish: MQTTPublish, id: String, source: String, time: Int64, authenticationName: String?,
        sessionName: String?, extensions: Extensions
    ) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(384 + publish.payload.readableBytes * 4 / 3)
        var j = JSONObject(into: out)
        j.string("specversion", "1.0")
        j.string("id", id)
        j.string("type", publishedType)
        j.string("source", source)
        j.string("subject", publish.topicName)
        j.time("time", time)
        let properties = publish.properties
        let json = isJSON(publish.payload, marked: properties.payloadFormatIndicator == .utf8)
        if let contentType = properties.contentType {
            j.string("datacontenttype", contentType)
        } else if json {
            j.string("datacontenttype", "application/json")
        }
        j.int("mqttqos", Int(publish.qos.rawValue))
        j.bool("mqttretain", publish.retain)
        if let topic = properties.responseTopic { j.string("mqttresponsetopic", topic) }
        if let data = properties.correlationData {
            j.string("mqttcorrelationdata", Data(data.readableBytesView).base64EncodedString())
        }
        let user = properties.userProperties
        if !user.isEmpty {
            var list: [UInt8] = [UInt8(ascii: "[")]
            for (index, property) in user.enumerated() {
                if index > 0 { list.append(UInt8(ascii: ",")) }
                var item = JSONObject(into: list)
                item.string("name", property.name)
                item.string("value", property.value)
                list = item.close()
            }
            list.append(UInt8(ascii: "]"))
            // A CloudEvents attribute is a string: the list as JSON text.
            j.string("mqttuserproperties", String(decoding: list, as: UTF8.self))
        }
        if let expiry = properties.messageExpiryInterval { j.int("mqttmessageexpiry", Int(expiry)) }
        if let authenticationName { j.string("mqttclientauthname", authenticationName) }
        if let sessionName { j.string("mqttclientsession", sessionName) }
        for (name, value) in extensions.attributes { j.string(name, value) }
        if json {
            j.object("data", Array(publish.payload.readableBytesView))
        } else {
            j.string("data_base64", Data(publish.payload.readableBytesView).base64EncodedString())
        }
        return j.close()
    }

    /// The payload is sent as `data` (JSON) when it is UTF-8 JSON, whether or not its
    /// Payload Format Indicator says UTF-8; otherwise as `data_base64`.
    static func isJSON(_ payload: ByteBuffer, marked: Bool) -> Bool {
        // What cannot start JSON text is not parsed at all (most binary payloads).
        guard let first = payload.readableBytesView.first(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D }),
            Self.jsonStarts.contains(first)
        else { return false }
        let data = Data(payload.readableBytesView)
        return (try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])) != nil
    }

    /// The bytes JSON text may start with (RFC 8259): an object, array, string, number, true, false, null.
    static let jsonStarts = Set(Array("{[\"-0123456789tfn".utf8))

    /// Event Grid's lifecycle event types; Custody's rejections and expiries have their own.
    public static func lifecycleType(_ kind: LedgerEventKind) -> String {
        switch kind {
        case .connected: "Microsoft.EventGrid.MQTTClientSessionConnected"
        case .disconnected: "Microsoft.EventGrid.MQTTClientSessionDisconnected"
        case .expired: "Custody.MQTTClientSessionExpired"
        case .rejected: "Custody.MQTTClientSessionRejected"
        }
    }

    /// A ledger event: `id` is the namespace and the ledger's sequence number (stable across
    /// restarts), `custodyseq` and `custodyhash` the ledger's own.
    public static func lifecycle(_ committed: CommittedEvent, source: String, extensions: Extensions) -> [UInt8] {
        let event = committed.event
        var j = JSONObject(into: [])
        j.string("specversion", "1.0")
        j.string("id", "\(source)-ledger-\(event.sequence)")
        j.string("type", lifecycleType(event.kind))
        j.string("source", source)
        j.string("subject", "clients/\(event.authenticationName.value)/sessions/\(event.sessionName.value)")
        j.time("time", event.timestamp)
        j.string("datacontenttype", "application/json")
        j.int("custodyseq", event.sequence)
        committed.hash.withBytes { j.hex("custodyhash", $0) }
        for (name, value) in extensions.attributes { j.string(name, value) }
        var data = JSONObject(into: [])
        data.string("namespaceName", source)
        data.string("clientAuthenticationName", event.authenticationName.value)
        data.string("clientSessionName", event.sessionName.value)
        data.int("sequenceNumber", event.sequence)
        switch event.kind {
        case .connected: break
        case .disconnected, .expired, .rejected:
            data.string("disconnectionReason", event.kind.reasonName.map(Self.pascalCase))
        }
        j.object("data", data.close())
        return j.close()
    }

    /// `clientInitiatedDisconnect` as Event Grid writes it: `ClientInitiatedDisconnect`.
    static func pascalCase(_ name: String) -> String {
        guard let first = name.first else { return name }
        return first.uppercased() + name.dropFirst()
    }
}
