import Foundation
import LMDBStorage
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Routing

/// The attributes CloudEvents 1.0 requires of every event, and their types (the JSON
/// schema's `required` and `type` for specversion, id, source, type; subject and time as
/// this binding always sets them).
func checkRequiredAttributes(_ event: [String: Any], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(event["specversion"] as? String == "1.0", sourceLocation: sourceLocation)
    for name in ["id", "source", "type", "subject", "time"] {
        let value = event[name] as? String
        #expect(value?.isEmpty == false, "\(name) in \(event)", sourceLocation: sourceLocation)
    }
    if let time = event["time"] as? String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        #expect(formatter.date(from: time) != nil, "time \(time) is RFC 3339", sourceLocation: sourceLocation)
    }
    #expect(!(event["data"] != nil && event["data_base64"] != nil), "data or data_base64, not both", sourceLocation: sourceLocation)
    for name in event.keys {
        #expect(name.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" }, "attribute name \(name)", sourceLocation: sourceLocation)
    }
}

private func object(_ bytes: [UInt8]) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
}

@Suite("CloudEvents: the routed events")
struct CloudEventsTests {
    @Test func aJSONPayloadIsDataWithEveryMQTTAttribute() throws {
        var properties = MQTTProperties()
        properties.contentType = "application/json"
        properties.responseTopic = "replies/1"
        properties.correlationData = ByteBuffer(string: "c-1")
        properties.userProperties = [MQTTUserProperty(name: "site", value: "plant \"7\"")]
        let publish = MQTTPublish(
            topicName: "areas/a1/machines/m1", payload: ByteBuffer(string: #"{"t": 21.5, "ok": true}"#), qos: .atLeastOnce,
            retain: true, packetIdentifier: 3, properties: properties)
        let bytes = CloudEvents.published(
            publish, id: "id-1", source: "ns-1", time: 1_700_000_000_123_456, authenticationName: "device-1",
            sessionName: "s-1", extensions: .init([("site", "plant-7")]))
        let event = try object(bytes)
        checkRequiredAttributes(event)
        #expect(event["type"] as? String == "MQTT.EventPublished")
        #expect(event["source"] as? String == "ns-1")
        #expect(event["subject"] as? String == "areas/a1/machines/m1")
        #expect(event["id"] as? String == "id-1")
        #expect(event["datacontenttype"] as? String == "application/json")
        #expect((event["data"] as? [String: Any])?["t"] as? Double == 21.5)
        #expect(event["data_base64"] == nil)
        #expect(event["mqttqos"] as? Int == 1)
        #expect(event["mqttretain"] as? Bool == true)
        #expect(event["mqttresponsetopic"] as? String == "replies/1")
        #expect(event["mqttcorrelationdata"] as? String == Data("c-1".utf8).base64EncodedString())
        #expect(event["mqttuserproperties"] as? String == #"[{"name":"site","value":"plant \"7\""}]"#)
        #expect(event["mqttclientauthname"] as? String == "device-1")
        #expect(event["mqttclientsession"] as? String == "s-1")
        #expect(event["site"] as? String == "plant-7")
    }

    /// The outbox keeps a message's event compact; the JSON made from it when it is sent is
    /// byte for byte the JSON made at once (JSON and binary payloads, every property,
    /// absent names).
    @Test(arguments: [true, false])
    func aCompactEventBecomesTheSameJSON(jsonPayload: Bool) throws {
        var properties = MQTTProperties()
        properties.contentType = jsonPayload ? "application/json" : nil
        properties.responseTopic = "replies/1"
        properties.correlationData = ByteBuffer(string: "c-1")
        properties.userProperties = [MQTTUserProperty(name: "site", value: "plant \"7\""), MQTTUserProperty(name: "a", value: "b")]
        properties.messageExpiryInterval = 90
        let payload = jsonPayload ? ByteBuffer(string: #"{"t": 21.5}"#) : ByteBuffer(bytes: [0, 1, 2, 0xFF])
        let publish = MQTTPublish(
            topicName: "areas/a1/machines/m1", payload: payload, qos: .atLeastOnce, retain: jsonPayload,
            packetIdentifier: 3, properties: properties)
        let time: Int64 = 1_700_000_000_123_456
        for (auth, session) in [("device-1", "s-1"), (nil, nil)] as [(String?, String?)] {
            let extensions = CloudEvents.Extensions([("site", "plant-7"), ("area", "a1")])
            let direct = CloudEvents.published(
                publish, id: "id-1", source: "ns-1", time: time, authenticationName: auth, sessionName: session,
                extensions: extensions)
            let compact = try #require(StoredEvent.compact(
                publish, id: "id-1", source: "ns-1", authenticationName: auth, sessionName: session, extensions: extensions))
            #expect(compact.first == StoredEvent.compactMarker && compact.count < direct.count)
            let record = OutboxRecord(route: "r", number: 1, acceptedAt: time, event: compact)
            #expect(StoredEvent.json(of: record) == direct, "\(String(decoding: StoredEvent.json(of: record), as: UTF8.self))")
            // And through the store's record format.
            let back = record.key.withUnsafeBytes { k in record.value.withUnsafeBytes { v in OutboxRecord(key: k, value: v) } }
            #expect(back.map { StoredEvent.json(of: $0) } == direct)
        }
        // Without properties the record is plainer (no MQTT encoding) and makes the same JSON.
        for (qos, retain) in [(MQTTQoS.atLeastOnce, false), (.exactlyOnce, true), (.atMostOnce, false)] {
            let bare = MQTTPublish(topicName: "areas/a1/m", payload: payload, qos: qos, retain: retain,
                                   packetIdentifier: qos == .atMostOnce ? nil : 9)
            let direct = CloudEvents.published(
                bare, id: "id-2", source: "ns-1", time: time, authenticationName: "device-1", sessionName: nil,
                extensions: CloudEvents.Extensions([("site", "plant-7")]))
            let plain = try #require(StoredEvent.compact(
                bare, id: "id-2", source: "ns-1", authenticationName: "device-1", sessionName: nil,
                extensions: CloudEvents.Extensions([("site", "plant-7")])))
            #expect(plain.first == StoredEvent.plainMarker)
            let record = OutboxRecord(route: "r", number: 3, acceptedAt: time, event: plain)
            #expect(StoredEvent.json(of: record) == direct, "\(String(decoding: StoredEvent.json(of: record), as: UTF8.self))")
            #expect(StoredEvent.rendered(record).event == direct)
        }
        // A record holding JSON (a lifecycle event, or one written before) is sent as it is.
        let json = OutboxRecord(route: "r", number: 2, acceptedAt: time, event: Array(#"{"id":"x"}"#.utf8))
        #expect(StoredEvent.json(of: json) == json.event)
    }

    @Test func aBinaryPayloadIsDataBase64() throws {
        let payload: [UInt8] = [0, 1, 2, 0xFF]
        let publish = MQTTPublish(topicName: "t", payload: ByteBuffer(bytes: payload))
        let event = try object(CloudEvents.published(
            publish, id: "x", source: "s", time: 0, authenticationName: nil, sessionName: nil, extensions: .init()))
        checkRequiredAttributes(event)
        #expect(event["data"] == nil)
        #expect(event["data_base64"] as? String == Data(payload).base64EncodedString())
        #expect(event["datacontenttype"] == nil)
        // Text that is not JSON is not data either.
        let text = try object(CloudEvents.published(
            MQTTPublish(topicName: "t", payload: ByteBuffer(string: "hello")), id: "y", source: "s", time: 0,
            authenticationName: nil, sessionName: nil, extensions: .init()))
        #expect(text["data_base64"] as? String == Data("hello".utf8).base64EncodedString())
    }

    @Test func lifecycleEventsUseEventGridsTypesAndFields() throws {
        let hash = ChainHash(words: (0xABAB_ABAB_ABAB_ABAB, 0xABAB_ABAB_ABAB_ABAB, 0xABAB_ABAB_ABAB_ABAB, 0xABAB_ABAB_ABAB_ABAB))
        let connected = CommittedEvent(
            event: LedgerEvent(
                sequence: 7, timestamp: 1_700_000_000_000_000, kind: .connected,
                authenticationName: AuthenticationName(unchecked: "device-1"), sessionName: SessionName(unchecked: "s-1"),
                connection: 3, protocolVersion: .mqtt5, cleanStart: true, expiryInterval: 0),
            hash: hash)
        let event = try object(CloudEvents.lifecycle(connected, source: "ns", extensions: .init()))
        checkRequiredAttributes(event)
        #expect(event["type"] as? String == "Microsoft.EventGrid.MQTTClientSessionConnected")
        #expect(event["id"] as? String == "ns-ledger-7")
        #expect(event["custodyseq"] as? Int == 7)
        #expect(event["custodyhash"] as? String == String(repeating: "ab", count: 32))
        let data = try #require(event["data"] as? [String: Any])
        #expect(data["clientAuthenticationName"] as? String == "device-1")
        #expect(data["clientSessionName"] as? String == "s-1")
        #expect(data["sequenceNumber"] as? Int == 7)
        var lost = connected
        lost.event.kind = .disconnected(.connectionLost)
        let disconnected = try object(CloudEvents.lifecycle(lost, source: "ns", extensions: .init()))
        #expect(disconnected["type"] as? String == "Microsoft.EventGrid.MQTTClientSessionDisconnected")
        #expect((disconnected["data"] as? [String: Any])?["disconnectionReason"] as? String == "ConnectionLost")
    }

    @Test func binaryModeMovesAttributesToHeaders() throws {
        var properties = MQTTProperties()
        properties.contentType = "application/json"
        let publish = MQTTPublish(topicName: "a/ü", payload: ByteBuffer(string: #"{"v":1}"#), properties: properties)
        let bytes = CloudEvents.published(
            publish, id: "id-9", source: "ns", time: 0, authenticationName: nil, sessionName: nil, extensions: .init())
        let (headers, body) = RouteDelivery.binary(bytes)
        let byName = Dictionary(headers, uniquingKeysWith: { a, _ in a })
        #expect(byName["ce-specversion"] == "1.0")
        #expect(byName["ce-id"] == "id-9")
        #expect(byName["ce-type"] == "MQTT.EventPublished")
        #expect(byName["ce-subject"] == "a/%C3%BC", "percent-encoded UTF-8")
        #expect(byName["ce-mqttretain"] == "false")
        #expect(byName["Content-Type"] == "application/json")
        #expect(byName["ce-data"] == nil)
        #expect(String(decoding: body, as: UTF8.self) == #"{"v":1}"#)
    }

    @Test func outboxRecordsRoundTrip() throws {
        let record = OutboxRecord(route: "r-1", number: 0x0102_0304_0506_0708, acceptedAt: -5, event: Array("{}".utf8))
        let key = record.key
        let value = record.value
        let back = key.withUnsafeBytes { k in value.withUnsafeBytes { v in OutboxRecord(key: k, value: v) } }
        #expect(back == record)
        #expect(key.starts(with: OutboxRecord.prefix(route: "r-1")))
        #expect(DeadLetterSink.fileName(route: "r", number: 42) == "r-00000000000000000042.json")
        // Format 2 keeps the failed attempts; format 1 stays what a record without them is.
        #expect(value[0] == 1)
        var tried = record
        tried.attempts = 0x0A0B_0C0D
        let triedValue = tried.value
        #expect(triedValue[0] == 2 && triedValue.count == value.count + 4)
        let triedBack = key.withUnsafeBytes { k in triedValue.withUnsafeBytes { v in OutboxRecord(key: k, value: v) } }
        #expect(triedBack == tried)
        // The routes' lifecycle cursor is not an outbox record.
        let cursorValue: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0, 9]
        let notRecord = LifecycleRouteCursor.key.withUnsafeBytes { k in cursorValue.withUnsafeBytes { v in OutboxRecord(key: k, value: v) } }
        #expect(notRecord == nil)
    }

    @Test func retryAfterAndBackoff() {
        #expect(RouteDelivery.retryAfter("3") == 3)
        #expect(RouteDelivery.retryAfter("soon") == nil)
        for attempts in 1...30 {
            let wait = RouteDelivery.backoff(attempts: attempts)
            let ceiling = min(60, 0.1 * pow(2, Double(attempts - 1)))
            #expect(wait >= ceiling / 2 && wait <= ceiling)
        }
    }
}
