import Foundation
import Testing

@testable import LedgerCore

/// The events of the golden file `Golden/records-v1.bin`, in order. They cover every
/// kind, every reason, every protocol version, both clean-start values, non-ASCII names,
/// an empty session name (a rejected R1 claim) and an absent remote address.
func goldenEvents() -> [LedgerEvent] {
    var events: [LedgerEvent] = []
    var sequence: UInt64 = 0
    func add(_ kind: LedgerEventKind, auth: String, session: String, connection: UInt64,
             proto: ProtocolVersion = .mqtt5, clean: Bool = false, expiry: UInt32 = 3600, remote: String = "127.0.0.1:50000") {
        sequence += 1
        events.append(LedgerEvent(
            sequence: sequence, timestamp: 1_764_000_000_000_000 + Int64(sequence) * 1_500,
            kind: kind, authenticationName: AuthenticationName(unchecked: auth),
            sessionName: SessionName(unchecked: session), connection: connection, protocolVersion: proto,
            cleanStart: clean, expiryInterval: expiry, remoteAddress: remote))
    }
    add(.connected, auth: "ipv4=127.0.0.1", session: "sessionId1", connection: 1)
    add(.connected, auth: "ipv4=127.0.0.1", session: "sessionId2", connection: 2, proto: .mqtt3_1_1, clean: true, expiry: 0)
    add(.rejected(.ownedByAnotherClient), auth: "Other-Client", session: "sessionId1", connection: 3, expiry: 0)
    add(.rejected(.invalidSessionName), auth: "device-1", session: "", connection: 4, expiry: 0, remote: "")
    add(.disconnected(.sessionTakenOver), auth: "IPV4=127.0.0.1", session: "sessionId1", connection: 1)
    add(.connected, auth: "IPV4=127.0.0.1", session: "sessionId1", connection: 5, proto: .mqtt3_1)
    add(.connected, auth: "gerät-ü", session: "zähler/😀", connection: 6, proto: .unknown, remote: "[::1]:1883")
    for reason in DisconnectReason.allCases {
        add(.disconnected(reason), auth: "device-\(reason.rawValue)", session: "s-\(reason.rawValue)", connection: 100 + UInt64(reason.rawValue))
    }
    // Expiry codes after 3 came later (`laterReasonCodesRoundTrip`).
    for reason in ExpiryReason.allCases where reason.rawValue <= 3 {
        add(.expired(reason), auth: "device-\(reason.rawValue)", session: "s-\(reason.rawValue)", connection: 200 + UInt64(reason.rawValue), remote: "")
    }
    // The file was written when 7 was the last rejection code; later codes are appended to the
    // format, never into this file (`laterReasonCodesRoundTrip`).
    for reason in RejectionReason.allCases where reason.rawValue <= 7 {
        add(.rejected(reason), auth: "device-\(reason.rawValue)", session: "r-\(reason.rawValue)", connection: 300 + UInt64(reason.rawValue), expiry: 0)
    }
    return events
}

/// Reason codes appended after the golden file was written: each encodes and decodes.
@Test func laterReasonCodesRoundTrip() throws {
    let later = RejectionReason.allCases.filter { $0.rawValue > 7 }.map { LedgerEventKind.rejected($0) }
        + ExpiryReason.allCases.filter { $0.rawValue > 3 }.map { LedgerEventKind.expired($0) }
    for kind in later {
        let event = LedgerEvent(
            sequence: 1, timestamp: 1_764_000_000_000_000, kind: kind,
            authenticationName: AuthenticationName(unchecked: "device"), sessionName: SessionName(unchecked: "s"),
            connection: 1, protocolVersion: .mqtt5, cleanStart: false, expiryInterval: 0, remoteAddress: "127.0.0.1:1")
        let record = EventRecordFormat.encode(event, previous: .genesis)
        let decoded = try record.withUnsafeBytes { bytes in try EventRecordFormat.decode(bytes) }
        #expect(decoded.event == event)
    }
}

/// Golden file layout: for each record, its length (UInt32 little-endian) then its bytes.
func encodeGoldenFile(_ events: [LedgerEvent]) -> [UInt8] {
    var out: [UInt8] = []
    var previous = ChainHash.genesis
    for event in events {
        let record = EventRecordFormat.encode(event, previous: previous)
        previous = record.withUnsafeBytes { EventRecordFormat.chainHash(of: $0, previous: previous) }
        withUnsafeBytes(of: UInt32(record.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: record)
    }
    return out
}

func splitGoldenFile(_ bytes: [UInt8]) throws -> [[UInt8]] {
    var records: [[UInt8]] = []
    var offset = 0
    while offset < bytes.count {
        try #require(offset + 4 <= bytes.count)
        let length = bytes[offset..<offset + 4].withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
        offset += 4
        try #require(offset + length <= bytes.count)
        records.append(Array(bytes[offset..<offset + length]))
        offset += length
    }
    return records
}

/// Decodes every record of a golden file to its expected event and checks the chain; answers
/// the last hash.
@discardableResult
func checkGoldenRecords(_ golden: [UInt8], _ events: [LedgerEvent]) throws -> ChainHash {
    let records = try splitGoldenFile(golden)
    #expect(records.count == events.count)
    var previous = ChainHash.genesis
    for (bytes, expected) in zip(records, events) {
        let record = try bytes.withUnsafeBytes { try EventRecordFormat.decode($0) }
        #expect(record.event == expected)
        #expect(bytes[0] == (expected.epoch == 0 ? 1 : 2))
        let recomputed = bytes.withUnsafeBytes { EventRecordFormat.chainHash(of: $0, previous: previous) }
        #expect(recomputed == record.hash, "chain broken at \(expected.sequence)")
        previous = record.hash
    }
    return previous
}

let goldenURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/records-v1.bin")
let goldenHeadURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/records-v1.head")

@Suite("Record format v1")
struct RecordFormatTests {
    /// Run once with CUSTODY_WRITE_GOLDEN=1 to create the golden files; never rewrite them
    /// for format 1 afterwards: they prove that today's logs stay readable.
    @Test func goldenFileDecodesToTheKnownEvents() throws {
        let events = goldenEvents()
        if ProcessInfo.processInfo.environment["CUSTODY_WRITE_GOLDEN"] == "1" {
            let bytes = encodeGoldenFile(events)
            try Data(bytes).write(to: goldenURL)
            var head = ChainHash.genesis
            for record in try splitGoldenFile(bytes) { head = record.withUnsafeBytes { EventRecordFormat.chainHash(of: $0, previous: head) } }
            try (head.hex + "\n").write(to: goldenHeadURL, atomically: true, encoding: .utf8)
        }
        let previous = try checkGoldenRecords(try [UInt8](Data(contentsOf: goldenURL)), events)
        let head = try String(contentsOf: goldenHeadURL, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(previous.hex == head)
    }

    @Test func encodingTodayIsByteIdenticalToTheGoldenFile() throws {
        let golden = try [UInt8](Data(contentsOf: goldenURL))
        #expect(encodeGoldenFile(goldenEvents()) == golden)
    }

    @Test func firstGoldenRecordMatchesTheDocumentedLayout() throws {
        let records = try splitGoldenFile([UInt8](Data(contentsOf: goldenURL)))
        let first = records[0]
        // "ipv4=127.0.0.1" (14) + "sessionId1" (10) + "127.0.0.1:50000" (15)
        #expect(first.count == 40 + 14 + 10 + 15 + 32)
        #expect(Array(first[0..<6]) == [1, 1, 0, 5, 0, 15])
        #expect(Array(first[6..<12]) == [14, 0, 10, 0, 0, 0])
        #expect(Array(first[12..<16]) == [0x10, 0x0E, 0, 0])  // 3600
        #expect(Array(first[16..<24]) == [1, 0, 0, 0, 0, 0, 0, 0])
        #expect(Array(first[40..<54]) == Array("ipv4=127.0.0.1".utf8))
    }

    @Test func everyByteOfARecordIsCoveredByTheHash() throws {
        let event = goldenEvents()[0]
        let record = EventRecordFormat.encode(event, previous: .genesis)
        let sealed = try record.withUnsafeBytes { try EventRecordFormat.decode($0) }.hash
        for index in 0..<(record.count - EventRecordFormat.hashSize) {
            var edited = record
            edited[index] ^= 0x01
            let recomputed = edited.withUnsafeBytes { EventRecordFormat.chainHash(of: $0, previous: .genesis) }
            #expect(recomputed != sealed, "byte \(index) is not covered")
        }
        // The previous hash is part of the link as well.
        let other = ChainHash(words: (1, 0, 0, 0))
        #expect(record.withUnsafeBytes { EventRecordFormat.chainHash(of: $0, previous: other) } != sealed)
    }

    @Test func malformedRecordsAreRefusedWithTheirReason() throws {
        let record = EventRecordFormat.encode(goldenEvents()[0], previous: .genesis)
        func decode(_ bytes: [UInt8]) -> RecordFormatError? {
            do {
                _ = try bytes.withUnsafeBytes { try EventRecordFormat.decode($0) }
                return nil
            } catch let error as RecordFormatError {
                return error
            } catch {
                return nil
            }
        }
        #expect(decode(Array(record.prefix(10))) == .truncated)
        #expect(decode(Array(record.dropLast())) == .lengthMismatch(expected: record.count, actual: record.count - 1))
        var bad = record; bad[0] = 3
        #expect(decode(bad) == .unknownVersion(3))
        // Version 2 has 8 more bytes of header: a version 1 record relabelled is too short.
        bad = record; bad[0] = 2
        #expect(decode(bad) == .lengthMismatch(expected: record.count + 8, actual: record.count))
        bad = record; bad[1] = 9
        #expect(decode(bad) == .unknownKind(9))
        bad = record; bad[1] = 2; bad[2] = 200
        #expect(decode(bad) == .unknownReason(kind: 2, reason: 200))
        bad = record; bad[3] = 7
        #expect(decode(bad) == .unknownProtocolVersion(7))
        bad = record; bad[4] = 0x80
        #expect(decode(bad) == .reservedBitsSet)
        bad = record; bad[10] = 1
        #expect(decode(bad) == .reservedBitsSet)
        bad = record; bad[40] = 0xFF
        #expect(decode(bad) == .invalidUTF8)
    }

    @Test func longRemoteAddressesAndNamesAreCutAtCharacterBoundaries() throws {
        var event = goldenEvents()[0]
        event.remoteAddress = String(repeating: "é", count: 200)  // 400 bytes
        let record = EventRecordFormat.encode(event, previous: .genesis)
        let decoded = try record.withUnsafeBytes { try EventRecordFormat.decode($0) }.event
        #expect(decoded.remoteAddress == String(repeating: "é", count: 127))
    }

    @Test func sessionEntriesRoundTrip() throws {
        let entry = SessionEntry(
            owner: AuthenticationName(unchecked: "Gerät-1"), state: .disconnected(deadline: 1_764_000_003_600_000_000),
            connection: 42, protocolVersion: .mqtt3_1_1, cleanStart: true, expiryInterval: 3600,
            sinceSequence: 9, sinceTime: 1_764_000_000_000_000, firstSequence: 3)
        let name = SessionName(unchecked: "zähler/😀")
        let bytes = ProjectionFormat.encode(entry, named: name)
        let (decodedName, decoded) = try bytes.withUnsafeBytes { try ProjectionFormat.decode($0) }
        #expect(decodedName == name)
        #expect(decoded == entry)
    }

    @Test func longNamesGetHashedKeysThatStayUnderLMDBsLimit() {
        let long = String(repeating: "😀", count: 128)  // 512 bytes
        let key = ProjectionFormat.key(for: long)
        #expect(key.count == 33)
        #expect(key[0] == 0xFF)
        #expect(ProjectionFormat.key(for: "short") == Array("short".utf8))
        #expect(ProjectionFormat.key(for: long + "x") != key)
    }

    @Test func chainHashHexRoundTrips() throws {
        let hash = ChainHash.link(previous: .genesis, body: UnsafeRawBufferPointer(start: nil, count: 0))
        // SHA-256 of 32 zero bytes.
        #expect(hash.hex == "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925")
        #expect(ChainHash(hex: hash.hex) == hash)
        #expect(ChainHash(hex: "zz") == nil)
    }
}
