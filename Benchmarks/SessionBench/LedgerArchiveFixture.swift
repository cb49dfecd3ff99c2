import ArgumentParser
import Foundation
import LMDBStorage
import SessionLedger

/// A test helper: a ledger of `--cycles` connect/disconnect cycles (two events each) spread
/// evenly over `--days` days before now, bulk loaded (`LedgerWriter.load`), a checkpoint every
/// `--checkpoint-every` records, then archived with a `--retention-days` retention. Session
/// `s-K` is cycled every `--sessions` cycles. Prints `fixture: head=N hash=H live_first=F
/// segments=S`. A child process, so that a test can run it at a low priority.
struct LedgerArchiveFixture: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger-archive-fixture", abstract: "Test helper: builds and archives a ledger.", shouldDisplay: false)

    @Option var dataDir: String
    @Option var cycles: Int
    @Option var days: Int
    @Option var checkpointEvery: UInt64
    @Option var retentionDays: Int64
    @Option var sessions: Int = 1000
    @Option(help: "The end of the history, µs since the epoch (default: now).")
    var end: Int64?

    func run() throws {
        let day: Int64 = 86_400 * 1_000_000
        let end = self.end ?? wallClockMicroseconds()
        let clock = FixtureClock(end - Int64(days) * day)
        let step = Int64(days) * day / Int64(cycles)
        let store = try LedgerStore(directory: dataDir)
        defer { store.close() }
        let writer = try LedgerWriter(
            store: store, policy: try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 100), clock: { clock.now })
        writer.checkpointEvery = checkpointEvery
        _ = try writer.recover()
        let chunk = min(5_000, max(1, Int(checkpointEvery) / 4))
        var requests: [LedgerWriter.BulkRequest] = []
        requests.reserveCapacity(2 * chunk)
        for start in stride(from: 0, to: cycles, by: chunk) {
            requests.removeAll(keepingCapacity: true)
            for i in start..<min(start + chunk, cycles) {
                let name = SessionName(unchecked: "s-\(i % sessions)")
                let connection = writer.nextConnectionNumber()
                requests.append(.claim(ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "client-\(i % sessions % 50)"), sessionName: name,
                    connection: connection, protocolVersion: .mqtt5, cleanStart: true, requestedExpiryInterval: 0,
                    remoteAddress: "10.0.\(i % 200).\(i % 250):5\(i % 1000)", identity: .authenticated)))
                requests.append(.release(ReleaseRequest(sessionName: name, connection: connection, reason: .clientInitiatedDisconnect)))
            }
            // One transaction per chunk, all at one time: time moves between chunks.
            let refused = try writer.load(requests, batch: requests.count)
            guard refused == 0 else { throw ValidationError("\(refused) claims were refused") }
            clock.now += step * Int64(chunk)
        }
        writer.start()
        let archiveDirectory = dataDir + "/archive"
        let archiver = LedgerArchiver(
            store: store, writer: writer, directory: archiveDirectory,
            policy: LedgerArchiver.Policy(retention: retentionDays * day, maxLiveBytes: nil, deleteBatch: 20_000),
            clock: { clock.now })
        while try archiver.runOnce() {}
        writer.stop()
        let (liveFirst, head) = try store.read { (try $0.firstLiveRecord()?.sequence ?? 0, try $0.head()) }
        print("fixture: head=\(head.sequence) hash=\(head.hash.hex) live_first=\(liveFirst) segments=\(ArchiveSegment.list(archiveDirectory).count)")
    }
}

/// The fixture's clock: it moves only when told (one thread uses it).
final class FixtureClock: @unchecked Sendable {
    var now: Int64
    init(_ now: Int64) { self.now = now }
}
