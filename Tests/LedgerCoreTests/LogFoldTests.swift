import CustodyTesting
import Testing

@testable import LedgerCore

/// The string-free fold and the plain projection must agree on any log: both apply
/// `SessionTransition`, but they count and index differently.
@Suite("Log fold")
struct LogFoldTests {
    /// A random but valid-looking history over a few names and identities (with case
    /// variants), built by deciding random claims with the real rules.
    func randomHistory(seed: UInt64, events count: Int) -> [LedgerEvent] {
        var random = SplitMix(seed: seed)
        var projection = OwnershipProjection()
        var events: [LedgerEvent] = []
        var now: Int64 = 1_764_000_000_000_000
        let owners = ["alice", "Alice", "bob", "BOB", "ipv4=127.0.0.1", "Gerät"]
        let names = (0..<12).map { "s-\($0)" } + ["zähler/😀", String(repeating: "x", count: 128)]
        let policy = try! NamespacePolicy(maximumClientSessionsPerAuthenticationName: 3)
        var connection: UInt64 = 0
        func record(_ event: LedgerEvent) {
            var event = event
            event.sequence = UInt64(events.count + 1)
            event.timestamp = now
            projection.apply(event)
            events.append(event)
        }
        while events.count < count {
            now += Int64(random.next() % 120) * 1_000_000
            let name = SessionName(unchecked: names[Int(random.next() % UInt64(names.count))])
            switch random.next() % 4 {
            case 0, 1:
                connection += 1
                let owner = AuthenticationName(unchecked: owners[Int(random.next() % UInt64(owners.count))])
                let claim = ClaimRequest(
                    authenticationName: owner, sessionName: name, connection: connection,
                    cleanStart: random.next() % 3 == 0, requestedExpiryInterval: UInt32(random.next() % 4) * 60)
                let plan = SessionRules.plan(
                    claim, current: projection.sessions[name], requesterLiveSessions: projection.liveSessionCount(of: owner),
                    policy: policy, now: now)
                plan.events.forEach(record)
            case 2:
                if let entry = projection.sessions[name],
                   let event = SessionRules.release(
                    entry.connection, of: name, reason: .connectionLost,
                    newExpiryInterval: random.next() % 2 == 0 ? nil : UInt32(random.next() % 3) * 30,
                    current: entry, policy: policy) {
                    record(event)
                }
            default:
                for (expiredName, entry) in projection.sessions where entry.hasExpired(at: now) {
                    record(SessionRules.endingEvent(of: entry, named: expiredName, kind: .expired(.sessionExpired)))
                }
            }
        }
        return events
    }

    @Test(arguments: [1, 2, 3, 4, 5] as [UInt64])
    func foldAgreesWithTheProjectionAfterEveryEvent(seed: UInt64) throws {
        let events = randomHistory(seed: seed, events: 600)
        var reference = OwnershipProjection()
        var fold = LogFold()
        var previous = ChainHash.genesis
        for event in events {
            let bytes = EventRecordFormat.encode(event, previous: previous)
            previous = bytes.withUnsafeBytes { EventRecordFormat.storedHash($0) }
            reference.apply(event)
            try bytes.withUnsafeBytes { _ = try fold.apply(record: $0) }
            if event.sequence % 50 == 0 || event.sequence == UInt64(events.count) {
                #expect(fold.projection == reference, "diverged at \(event.sequence)")
            }
        }
        #expect(!reference.sessions.isEmpty)
    }

    @Test func foldRefusesInvalidUTF8InAnyName() throws {
        let event = LedgerEvent(
            sequence: 1, timestamp: 1, kind: .connected, authenticationName: AuthenticationName(unchecked: "abc"),
            sessionName: SessionName(unchecked: "def"), connection: 1, protocolVersion: .mqtt5, cleanStart: false,
            expiryInterval: 0, remoteAddress: "ghi")
        let good = EventRecordFormat.encode(event, previous: .genesis)
        for offset in [40, 43, 46] {  // first byte of each name
            var bad = good
            bad[offset] = 0xFF
            var fold = LogFold()
            #expect(throws: RecordFormatError.invalidUTF8) {
                try bad.withUnsafeBytes { _ = try fold.apply(record: $0) }
            }
        }
    }

    @Test func internerKeepsManyNamesApart() {
        var interner = ByteInterner()
        var ids: [Int] = []
        for i in 0..<5_000 {
            let text = Array("name-\(i)".utf8)
            let (id, isNew) = text.withUnsafeBytes { interner.intern($0) }
            #expect(isNew)
            ids.append(id)
        }
        #expect(ids == Array(0..<5_000))
        for i in stride(from: 0, to: 5_000, by: 7) {
            let text = Array("name-\(i)".utf8)
            let (id, isNew) = text.withUnsafeBytes { interner.intern($0) }
            #expect(!isNew && id == i)
        }
        let empty = [UInt8]().withUnsafeBytes { interner.intern($0) }
        #expect(empty.isNew && empty.id == 5_000)
        #expect(interner.string(4_999) == "name-4999" && interner.string(5_000) == "" && interner.string(0) == "name-0")
    }
}


