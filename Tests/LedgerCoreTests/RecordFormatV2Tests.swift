import Foundation
import Testing

@testable import LedgerCore

/// The events of `Golden/records-v2.bin`: a cluster node's log, where every event carries the
/// epoch (etcd revision) of its decision, mixed with version 1 records (epoch 0) as a node
/// that joined a cluster after running alone has them.
func goldenEventsV2() -> [LedgerEvent] {
    var events: [LedgerEvent] = []
    func add(_ kind: LedgerEventKind, session: String, connection: UInt64, epoch: UInt64, expiry: UInt32 = 3600) {
        let sequence = UInt64(events.count + 1)
        events.append(LedgerEvent(
            sequence: sequence, timestamp: 1_765_000_000_000_000 + Int64(sequence) * 2_000, kind: kind,
            authenticationName: AuthenticationName(unchecked: "Device-1"), sessionName: SessionName(unchecked: session),
            connection: connection, protocolVersion: .mqtt5, cleanStart: false, expiryInterval: expiry,
            remoteAddress: "127.0.0.1:50001", epoch: epoch))
    }
    add(.connected, session: "alone", connection: 1, epoch: 0)
    add(.connected, session: "s1", connection: 2, epoch: 7)
    add(.rejected(.ownedByAnotherClient), session: "s2", connection: 3, epoch: 9, expiry: 0)
    add(.disconnected(.sessionTakenOver), session: "s1", connection: 2, epoch: 12)
    add(.disconnected(.connectionLost), session: "s3", connection: 4, epoch: 0x0102_0304_0506)
    add(.expired(.notHeldInCluster), session: "alone", connection: 1, epoch: 13)
    return events
}

let goldenV2URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/records-v2.bin")

@Suite("Record format v2 (epoch)")
struct RecordFormatV2Tests {
    /// Run once with CUSTODY_WRITE_GOLDEN=1 to create the file; never rewrite it afterwards.
    @Test func goldenFileDecodesToTheKnownEvents() throws {
        let events = goldenEventsV2()
        if ProcessInfo.processInfo.environment["CUSTODY_WRITE_GOLDEN"] == "1" {
            try Data(encodeGoldenFile(events)).write(to: goldenV2URL)
        }
        let golden = try [UInt8](Data(contentsOf: goldenV2URL))
        #expect(encodeGoldenFile(events) == golden)
        try checkGoldenRecords(golden, events)
    }

    @Test func theEpochSitsAfterTheConnectionNumber() throws {
        let records = try splitGoldenFile([UInt8](Data(contentsOf: goldenV2URL)))
        let second = records[1]
        // "Device-1" (8) + "s1" (2) + "127.0.0.1:50001" (15), after a 48-byte header.
        #expect(second.count == 48 + 8 + 2 + 15 + 32)
        #expect(Array(second[40..<48]) == [7, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(second[48..<56]) == Array("Device-1".utf8))
        // An event without an epoch is byte for byte a version 1 record.
        #expect(records[0].count == 40 + 8 + 5 + 15 + 32)
    }

    @Test func theFoldReadsBothVersions() throws {
        var fold = LogFold()
        for bytes in try splitGoldenFile([UInt8](Data(contentsOf: goldenV2URL))) {
            try bytes.withUnsafeBytes { _ = try fold.apply(record: $0) }
        }
        let projection = fold.projection
        #expect(projection.sessions[SessionName(unchecked: "alone")] == nil)
        #expect(projection.sessions[SessionName(unchecked: "s1")]?.state == .disconnected(deadline: 1_765_000_000_000_000 + 4 * 2_000 + 3_600_000_000))
    }
}
