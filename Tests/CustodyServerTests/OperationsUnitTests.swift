import Foundation
import Logging
import SessionLedger
import Testing

@testable import CustodyServer

@Suite("Operations: JSON logs, event topics and documents")
struct OperationsUnitTests {
    /// One JSON object per line with time, level, label, message and metadata; strings escaped.
    @Test func jsonLogLinesParse() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]) }
        var logger = Logger(label: "custody.mqtt") { label in JSONLogHandler(label: label, level: .info, fileDescriptor: ends[1]) }
        logger[metadataKey: "instance"] = "a"
        logger.debug("not written")
        logger.info("connect granted", metadata: ["session_name": "s\"1\n", "nested": ["x", "y"], "map": ["k": "v"]])
        logger.error("ledger release failed")
        close(ends[1])
        let text = String(decoding: FileHandle(fileDescriptor: ends[0]).readDataToEndOfFile(), as: UTF8.self)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 2, "\(text)")
        let first = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        #expect(first["level"] as? String == "info")
        #expect(first["label"] as? String == "custody.mqtt")
        #expect(first["message"] as? String == "connect granted")
        let time = try #require(first["time"] as? String)
        #expect(try #/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/#.wholeMatch(in: time) != nil)
        let metadata = try #require(first["metadata"] as? [String: Any])
        #expect(metadata["session_name"] as? String == "s\"1\n")
        #expect(metadata["instance"] as? String == "a")
        #expect(metadata["nested"] as? [String] == ["x", "y"])
        #expect(metadata["map"] as? [String: String] == ["k": "v"])
        let second = try #require(try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        #expect(second["level"] as? String == "error")
        #expect((second["metadata"] as? [String: Any])?.count == 1)
    }

    @Test func eventTopicsEscapeWhatWouldChangeTheirLevels() {
        func topic(_ client: String, _ session: String) -> String {
            LifecycleEventPublisher.topic(for: LedgerEvent(
                kind: .connected, authenticationName: AuthenticationName(unchecked: client),
                sessionName: SessionName(unchecked: session), connection: 1, protocolVersion: .mqtt5, cleanStart: true,
                expiryInterval: 0))
        }
        #expect(topic("Device-1", "s1") == "$custody/events/clients/Device-1/sessions/s1")
        #expect(topic("a/b", "c+d#e") == "$custody/events/clients/a%2Fb/sessions/c%2Bd%23e")
        #expect(topic("100%", "x\u{0}y") == "$custody/events/clients/100%25/sessions/x%00y")
        #expect(topic("ü", "") == "$custody/events/clients/ü/sessions/")
        // Different names never share a topic.
        #expect(topic("a%2Fb", "s") != topic("a/b", "s"))
    }

    @Test func eventDocumentsCarryTheExportFields() throws {
        let event = LedgerEvent(
            sequence: 42, timestamp: 1_764_460_800_123_456, kind: .disconnected(.sessionTakenOver),
            authenticationName: AuthenticationName(unchecked: "Dev\"ice"), sessionName: SessionName(unchecked: "s1"),
            connection: 7, protocolVersion: .mqtt3_1_1, cleanStart: false, expiryInterval: 300, remoteAddress: "")
        let hash = ChainHash(hex: String(repeating: "ab", count: 32))!
        let json = LifecycleEventPublisher.json(CommittedEvent(event: event, hash: hash))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json)) as? [String: Any])
        #expect(object["seq"] as? Int == 42)
        #expect(object["time"] as? String == "2025-11-30T00:00:00.123456Z")
        #expect(object["kind"] as? String == "disconnected")
        #expect(object["reason"] as? String == "sessionTakenOver")
        #expect(object["authenticationName"] as? String == "Dev\"ice")
        #expect(object["sessionName"] as? String == "s1")
        #expect(object["connection"] as? Int == 7)
        #expect(object["protocolVersion"] as? Int == 4)
        #expect(object["cleanStart"] as? Bool == false)
        #expect(object["sessionExpiryInterval"] as? Int == 300)
        #expect(object["remoteAddress"] is NSNull)
        #expect(object["hash"] as? String == String(repeating: "ab", count: 32))
        #expect(object.count == 12)
    }
}
