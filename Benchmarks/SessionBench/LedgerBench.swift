import LMDBStorage
import ArgumentParser
import Foundation
import SessionLedger
import Synchronization

/// `custody-bench ledger`: the ledger alone, with group commit, no network.
struct LedgerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "Claims N sessions through the real ledger, disconnects and expires them, then replays the log.")

    @Option(help: "Number of sessions to claim (each gives three events: connected, disconnected, expired).")
    var sessions: Int = 100_000

    @Option(help: "Ledger directory. It must not hold a ledger yet; default: a new temporary directory, removed afterwards.")
    var dataDir: String?

    @Option(help: "Requests in flight at once: how many callers wait on the writer together.")
    var window: Int = 8192

    @Option(help: "Distinct authentication names the sessions are spread over (default: sessions / 100).")
    var users: Int?

    @Option(help: "A checkpoint record every N records, as custody's --checkpoint-every; 0 writes none (and keeps no prior entries).")
    var checkpointEvery: Int = Int(LedgerWriter.defaultCheckpointEvery)

    enum MetaSync: String, ExpressibleByArgument, CaseIterable {
        /// MDB_NOMETASYNC, answers held until the next flush (custody's way).
        case deferred
        /// LMDB's default: every commit flushes its data and then its meta page.
        case immediate
    }

    @Option(help: "When a commit's meta page is flushed: deferred (custody's: with the next commit's flush, answers held until then) or immediate (LMDB's default: two flushes per commit).")
    var metaSync: MetaSync = .deferred

    func validate() throws {
        guard sessions >= 1 else { throw ValidationError("--sessions must be at least 1, got \(sessions)") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1, got \(window)") }
        if let users, users < 1 { throw ValidationError("--users must be at least 1, got \(users)") }
        guard checkpointEvery >= 0 else { throw ValidationError("--checkpoint-every must be 0 or more, got \(checkpointEvery)") }
    }

    func run() throws {
        let directory: String
        let temporary = dataDir == nil
        if let dataDir {
            directory = dataDir
            if FileManager.default.fileExists(atPath: directory + "/data.mdb") {
                throw ValidationError("--data-dir \(directory) already holds a ledger; give a new directory")
            }
        } else {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("custody-bench-\(UUID().uuidString)").path
        }
        defer { if temporary { try? FileManager.default.removeItem(atPath: directory) } }

        // Spread sessions so that no client passes the cap of 100 live sessions.
        let users = self.users ?? max(1, (sessions + 99) / 100)
        guard (sessions + users - 1) / users <= 100 else {
            throw ValidationError("--users \(users) would put more than 100 sessions on one client; use at least \((sessions + 99) / 100)")
        }
        let clock = BenchClock()
        let policy = try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 100, maximumSessionExpiryInHours: 1)
        let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(deferredMetaSync: metaSync == .deferred))
        let writer = try LedgerWriter(store: store, policy: policy, clock: { clock.now() })
        writer.checkpointEvery = UInt64(checkpointEvery)
        let commits = CommitLog()
        writer.onCommit = { commits.record($0) }
        _ = try writer.recover()
        writer.start()

        let names = (0..<sessions).map { SessionName(unchecked: "bench-session-\($0)") }
        let owners = (0..<users).map { AuthenticationName(unchecked: "bench-client-\($0)") }
        let connections = (0..<sessions).map { _ in writer.nextConnectionNumber() }
        let failures = Counter()
        let gate = DispatchSemaphore(value: window)
        let done = DispatchGroup()

        let cpuStart = processCPUMicroseconds()
        let start = DispatchTime.now().uptimeNanoseconds
        // Phase 1: connect every session (expiry 1 h, so that a disconnect keeps it live).
        for i in 0..<sessions {
            gate.wait()
            done.enter()
            let request = ClaimRequest(
                authenticationName: owners[i % users], sessionName: names[i], connection: connections[i],
                protocolVersion: .mqtt5, cleanStart: false, requestedExpiryInterval: 3600)
            writer.claim(request) { result in
                if case .success(.granted) = result {} else { failures.increment() }
                gate.signal()
                done.leave()
            }
        }
        done.wait()
        let connectedAt = DispatchTime.now().uptimeNanoseconds
        // Phase 2: disconnect them all.
        for i in 0..<sessions {
            gate.wait()
            done.enter()
            writer.release(ReleaseRequest(sessionName: names[i], connection: connections[i], reason: .clientInitiatedDisconnect)) { result in
                if case .success(.some) = result {} else { failures.increment() }
                gate.signal()
                done.leave()
            }
        }
        done.wait()
        let releasedAt = DispatchTime.now().uptimeNanoseconds
        // Phase 3: two hours later, every session has outlived its expiry.
        clock.advance(by: 2 * 3600 * 1_000_000)
        var expired = 0
        while expired < sessions {
            let events = try waitFor { done in writer.expireDue(limit: 20_000, done) }.get()
            if events.isEmpty { break }
            expired += events.count
        }
        let end = DispatchTime.now().uptimeNanoseconds
        let cpu = processCPUMicroseconds() - cpuStart
        writer.stop()

        let failed = failures.value
        let events = Int(writer.currentHead.sequence)
        let seconds = Double(end - start) / 1e9
        let durableRate = Double(events) / seconds
        let p99Commit = commits.percentile(0.99)

        let replay = try measureReplay(store)
        store.close()

        func rate(_ count: Int, _ from: UInt64, _ to: UInt64) -> String {
            String(format: "%.0f", Double(count) / (Double(to - from) / 1e9))
        }
        print("meta_sync=\(metaSync.rawValue) window=\(window)")
        print("phase connect: sessions=\(sessions) rate=\(rate(sessions, start, connectedAt))/s")
        print("phase disconnect: sessions=\(sessions) rate=\(rate(sessions, connectedAt, releasedAt))/s")
        print("phase expire: sessions=\(expired) rate=\(rate(expired, releasedAt, end))/s")
        print("commits: count=\(commits.count) events_per_commit_mean=\(String(format: "%.1f", Double(events) / Double(max(commits.count, 1)))) p50_commit=\(commits.percentile(0.5))us p99_commit=\(p99Commit)us max_commit=\(commits.percentile(1.0))us busy=\(commits.totalMicroseconds / 1000)ms of_which_sync=\(commits.syncMicroseconds / 1000)ms")
        print(replay.summary)
        print("cpu: process_us=\(cpu) per_event_us=\(String(format: "%.2f", Double(cpu) / Double(max(events, 1)))) (writer and load generator together)")
        print("data: bytes=\(FileManager.default.fileExists(atPath: directory) ? fileSize(directory + "/data.mdb") : 0) failures=\(failed)")
        if failed > 0 || expired != sessions || !replay.verify.isIntact {
            print("ledger: FAILED failures=\(failed) expired=\(expired)/\(sessions) problem=\(String(describing: replay.verify.problem))")
            throw ExitCode.failure
        }
        print("ledger: events=\(events) durable_rate=\(String(format: "%.0f", durableRate))/s p99_commit=\(p99Commit)us replay_rate=\(String(format: "%.0f", replay.replayRate))/s verify=ok")
    }
}

func fileSize(_ path: String) -> Int {
    (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
}

/// Wall time plus an offset the benchmark moves forward to make sessions expire.
final class BenchClock: Sendable {
    private let offset = Mutex<Int64>(0)
    func now() -> Int64 { wallClockMicroseconds() + offset.withLock { $0 } }
    func advance(by micros: Int64) { offset.withLock { $0 += micros } }
}

/// Commit durations as the writer reports them.
final class CommitLog: Sendable {
    private let durations = Mutex<[Int64]>([])
    private let syncTotal = Mutex<Int64>(0)
    func record(_ commit: CommitStatistics) {
        durations.withLock { $0.append(commit.microseconds) }
        syncTotal.withLock { $0 += commit.syncMicroseconds }
    }
    var totalMicroseconds: Int64 { durations.withLock { $0.reduce(0, +) } }
    var syncMicroseconds: Int64 { syncTotal.withLock { $0 } }
    var count: Int { durations.withLock { $0.count } }
    func percentile(_ p: Double) -> Int64 {
        let sorted = durations.withLock { $0.sorted() }
        guard !sorted.isEmpty else { return 0 }
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }
}

struct ReplayMeasurement {
    var events: UInt64
    var replayRate: Double
    var verifyRate: Double
    var verify: VerifyReport

    var summary: String {
        "replay: events=\(events) replay_rate=\(String(format: "%.0f", replayRate))/s verify_rate=\(String(format: "%.0f", verifyRate))/s verify=\(verify.isIntact ? "ok" : "FAILED")"
    }
}

/// Replay = rebuild the projection from the log (format and density checked, no hashing);
/// verify = replay with the hash chain, then compare with the stored projection.
func measureReplay(_ store: LedgerStore) throws -> ReplayMeasurement {
    let replayStart = DispatchTime.now().uptimeNanoseconds
    let (_, head, _) = try store.read { try $0.replay(checkingChain: false) }
    let replayEnd = DispatchTime.now().uptimeNanoseconds
    let verify = try store.read { try $0.verify() }
    let verifyEnd = DispatchTime.now().uptimeNanoseconds
    return ReplayMeasurement(
        events: head.sequence,
        replayRate: Double(head.sequence) / (Double(replayEnd - replayStart) / 1e9),
        verifyRate: Double(verify.events) / (Double(verifyEnd - replayEnd) / 1e9),
        verify: verify)
}

/// `custody-bench replay`: replay and verify an existing ledger, read-only.
struct ReplayBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay", abstract: "Times replay and verify of an existing ledger (read-only).")

    @Option(help: "Ledger directory.")
    var dataDir: String

    @Option(help: "Rounds to run; each prints its own line.")
    var rounds: Int = 3

    func run() throws {
        let store = try LedgerStore(directory: dataDir, options: LedgerStoreOptions(readOnly: true))
        defer { store.close() }
        for _ in 0..<max(rounds, 1) {
            print(try measureReplay(store).summary)
        }
    }
}

/// A counter that escaping callbacks on other threads can bump.
final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

/// Blocks until a callback-style writer request answers.
func waitFor<T: Sendable>(_ start: (@escaping @Sendable (T) -> Void) -> Void) -> T {
    let box = ResultBox<T>()
    let finished = DispatchSemaphore(value: 0)
    start { result in
        box.value = result
        finished.signal()
    }
    finished.wait()
    return box.value!
}

final class ResultBox<T>: @unchecked Sendable {
    var value: T?
}

/// User + system CPU time of this process so far.
func processCPUMicroseconds() -> Int64 {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Int64(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000
        + Int64(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}
