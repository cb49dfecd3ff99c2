import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Synchronization
import Testing

// Helpers for driving the real `custody-audit` binary against real ledgers.

enum AuditTestError: Error {
    case timedOut(String)
    case failed(String)
}

func auditExecutable() throws -> URL { try builtProduct("custody-audit") }

func temporaryPath(_ label: String) -> String { scratchDirectory("audit-\(label)") }

struct AuditRun {
    var status: Int32
    var stdout: String
    var stderr: String

    var lines: [String] { stdout.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }

    /// Every stdout line parsed as a JSON object.
    func jsonLines() throws -> [[String: Any]] {
        try lines.map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
            return try #require(object as? [String: Any], "not a JSON object: \(line)")
        }
    }

    func json() throws -> [String: Any] {
        let all = try jsonLines()
        try #require(all.count == 1, "expected one JSON line, got \(all.count): \(stdout)")
        return all[0]
    }
}

/// Runs `custody-audit` with these arguments and waits (at most `timeout` seconds) for it to
/// end, on a thread of its own (`offPool`): the wait would otherwise hold one of the pool's threads.
/// `lowPriority`: at nice 19, so that a long run leaves the CPU to the tests beside it.
func runAudit(_ arguments: [String], timeout: Double = 60, lowPriority: Bool = false) async throws -> AuditRun {
    try await offPool { try runAuditBlocking(arguments, timeout: timeout, lowPriority: lowPriority) }
}

func runAuditBlocking(_ arguments: [String], timeout: Double = 60, lowPriority: Bool = false) throws -> AuditRun {
    let out = temporaryPath("stdout")
    let err = temporaryPath("stderr")
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    _ = FileManager.default.createFile(atPath: err, contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: out)
        try? FileManager.default.removeItem(atPath: err)
    }
    let child = Process()
    if lowPriority && FileManager.default.isExecutableFile(atPath: "/usr/bin/nice") {
        child.executableURL = URL(fileURLWithPath: "/usr/bin/nice")
        child.arguments = ["-n", "19", try auditExecutable().path] + arguments
    } else {
        child.executableURL = try auditExecutable()
        child.arguments = arguments
    }
    child.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    child.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
    try child.run()
    let deadline = Date().addingTimeInterval(timeout)
    while child.isRunning {
        if Date() > deadline {
            child.terminate()
            child.waitUntilExit()
            throw AuditTestError.timedOut("custody-audit \(arguments.joined(separator: " "))")
        }
        usleep(2_000)
    }
    child.waitUntilExit()
    return AuditRun(
        status: child.terminationStatus,
        stdout: try String(contentsOfFile: out, encoding: .utf8),
        stderr: try String(contentsOfFile: err, encoding: .utf8))
}

/// ISO-8601 UTC with microseconds, as custody-audit prints it.
func iso(_ micros: Int64) -> String {
    let seconds = micros / second
    let fraction = micros % second
    let formatter = DateFormatter()
    formatter.locale = Locale(identifier: "en_US_POSIX")
    formatter.timeZone = TimeZone(identifier: "UTC")
    formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ss"
    let base = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    return base + "." + String(format: "%06lld", fraction) + "Z"
}

func occurrences(of pattern: [UInt8], in bytes: [UInt8]) -> [Int] {
    guard !pattern.isEmpty, bytes.count >= pattern.count else { return [] }
    var found: [Int] = []
    var i = 0
    while i <= bytes.count - pattern.count {
        if bytes[i] == pattern[0] && Array(bytes[i..<i + pattern.count]) == pattern { found.append(i) }
        i += 1
    }
    return found
}

func littleEndian16(_ value: Int) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8)] }

/// The ledger every test questions, written through the real `LMDBSessionLedger` with a manual
/// clock. t0 = 2025-03-01T08:00:00Z; policy: 2 sessions per client, 1 h maximum expiry.
///
///     seq  t0+s   event
///     1    0      connected     alice  s1  (v5, expiry 600, 10.0.0.1:1001)
///     2    10     connected     bob    s2  (v3.1.1, clean, expiry 0, 10.0.0.2:1002)
///     3    20     disconnected  alice  s1  sessionTakenOver
///     4    20     connected     Alice  s1  (takeover, 10.0.0.1:1003)
///     5    30     rejected      bob    s1  ownedByAnotherClient
///     6    40     connected     alice  s3  (expiry 600)
///     7    50     rejected      ALICE  s4-tamper-marker  quotaExceeded
///     8    60     disconnected  Alice  s1  clientInitiatedDisconnect (deadline t0+660)
///     9    70     disconnected  bob    s2  connectionLost (expiry 0: s2 ends)
///     10   700    expired       Alice  s1  sessionExpired
///          --     restart at t0+800
///     11   800    disconnected  alice  s3  brokerRestart (deadline t0+1400)
///          --     restart at t0+2000
///     12   2000   expired       alice  s3  expiredWhileBrokerDown
///     13   2010   connected     carol  s5  (expiry 300, [::1]:2001)
///     14   2020   rejected      dave   ""  invalidSessionName
struct ScriptedLedger {
    static let t0: Int64 = 1_740_816_000 * second
    static let marker = "s4-tamper-marker"

    let directory: String
    let clock: ManualClock
    var connections: [String: ConnectionNumber] = [:]
    var head = LedgerHead.empty

    static func at(_ seconds: Int64) -> Int64 { t0 + seconds * second }

    static func make() async throws -> ScriptedLedger {
        var script = ScriptedLedger(directory: temporaryPath("ledger"), clock: ManualClock(start: t0))
        try await script.write()
        return script
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    static let policy = try! NamespacePolicy(maximumClientSessionsPerAuthenticationName: 2, maximumSessionExpiryInHours: 1)

    private mutating func write() async throws {
        var ledger = try LMDBSessionLedger(directory: directory, policy: Self.policy, clock: clock.ledgerClock)

        func claim(
            _ ledger: LMDBSessionLedger, _ label: String, _ client: String, _ session: String, expiry: UInt32 = 600,
            version: ProtocolVersion = .mqtt5, cleanStart: Bool = false, remote: String = ""
        ) async throws -> ClaimOutcome {
            let connection = ledger.nextConnectionNumber()
            connections[label] = connection
            return try await ledger.claim(ClaimRequest(
                authenticationName: AuthenticationName(unchecked: client), sessionName: SessionName(unchecked: session),
                connection: connection, protocolVersion: version, cleanStart: cleanStart,
                requestedExpiryInterval: expiry, remoteAddress: remote))
        }

        _ = try await claim(ledger, "alice-s1", "alice", "s1", remote: "10.0.0.1:1001")
        clock.set(Self.at(10))
        _ = try await claim(ledger, "bob-s2", "bob", "s2", expiry: 0, version: .mqtt3_1_1, cleanStart: true, remote: "10.0.0.2:1002")
        clock.set(Self.at(20))
        let takeover = try await claim(ledger, "Alice-s1", "Alice", "s1", remote: "10.0.0.1:1003")
        guard case .granted(let grant) = takeover, grant.replacedConnection == connections["alice-s1"] else {
            Issue.record("takeover not granted: \(takeover)")
            return
        }
        clock.set(Self.at(30))
        let stolen = try await claim(ledger, "bob-s1", "bob", "s1", remote: "10.0.0.2:1004")
        #expect(stolen == .rejected(.ownedByAnotherClient, sequence: 5))
        clock.set(Self.at(40))
        _ = try await claim(ledger, "alice-s3", "alice", "s3", remote: "10.0.0.1:1005")
        clock.set(Self.at(50))
        let quota = try await claim(ledger, "ALICE-s4", "ALICE", Self.marker, remote: "10.0.0.1:1006")
        #expect(quota == .rejected(.quotaExceeded, sequence: 7))
        clock.set(Self.at(60))
        try await ledger.release(ReleaseRequest(
            sessionName: SessionName(unchecked: "s1"), connection: connections["Alice-s1"]!,
            reason: .clientInitiatedDisconnect, remoteAddress: "10.0.0.1:1003"))
        clock.set(Self.at(70))
        try await ledger.release(ReleaseRequest(
            sessionName: SessionName(unchecked: "s2"), connection: connections["bob-s2"]!, reason: .connectionLost))
        clock.set(Self.at(700))
        let expired = try await ledger.expireDue()
        #expect(expired.map(\.sequence) == [10])
        ledger.close()

        clock.set(Self.at(800))
        ledger = try LMDBSessionLedger(directory: directory, policy: Self.policy, clock: clock.ledgerClock)
        #expect(ledger.recovery.disconnected.map(\.sequence) == [11])
        ledger.close()

        clock.set(Self.at(2000))
        ledger = try LMDBSessionLedger(directory: directory, policy: Self.policy, clock: clock.ledgerClock)
        #expect(ledger.recovery.expired.map(\.sequence) == [12])
        clock.set(Self.at(2010))
        _ = try await claim(ledger, "carol-s5", "carol", "s5", expiry: 300, remote: "[::1]:2001")
        clock.set(Self.at(2020))
        let invalid = try await claim(ledger, "dave", "dave", "")
        #expect(invalid == .rejected(.invalidSessionName, sequence: 14))
        head = ledger.head
        #expect(head.sequence == 14)
        #expect(try ledger.verify().isIntact)
        ledger.close()
    }
}

/// Runs a program at nice 19 (where `nice` exists) and answers its standard output; fails
/// unless it exits 0 within `timeout` seconds.
func runLowPriority(_ program: String, _ arguments: [String], timeout: Double) throws -> String {
    let out = temporaryPath("child-stdout")
    let err = temporaryPath("child-stderr")
    _ = FileManager.default.createFile(atPath: out, contents: nil)
    _ = FileManager.default.createFile(atPath: err, contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: out)
        try? FileManager.default.removeItem(atPath: err)
    }
    let child = Process()
    if FileManager.default.isExecutableFile(atPath: "/usr/bin/nice") {
        child.executableURL = URL(fileURLWithPath: "/usr/bin/nice")
        child.arguments = ["-n", "19", program] + arguments
    } else {
        child.executableURL = URL(fileURLWithPath: program)
        child.arguments = arguments
    }
    child.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    child.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
    try child.run()
    let deadline = Date().addingTimeInterval(timeout)
    while child.isRunning {
        if Date() > deadline {
            child.terminate()
            child.waitUntilExit()
            throw AuditTestError.timedOut("\(program) \(arguments.joined(separator: " "))")
        }
        usleep(10_000)
    }
    let stdout = try String(contentsOfFile: out, encoding: .utf8)
    guard child.terminationStatus == 0 else {
        throw AuditTestError.failed("\(program) exited \(child.terminationStatus): \(stdout) \((try? String(contentsOfFile: err, encoding: .utf8)) ?? "")")
    }
    return stdout
}

/// Like `withScratchDirectory`, on a tmpfs where there is one: the ledgers these tests build
/// commit many times, and on ext4 their fsyncs would hold up those of the tests beside them.
func withMemoryScratchDirectory<R>(_ label: String, _ body: (String) throws -> R) throws -> R {
    guard FileManager.default.fileExists(atPath: "/dev/shm") else { return try withScratchDirectory(label, body) }
    let directory = "/dev/shm/custody-\(label)-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try body(directory)
}

func withMemoryScratchDirectory<R>(_ label: String, _ body: (String) async throws -> R) async throws -> R {
    guard FileManager.default.fileExists(atPath: "/dev/shm") else { return try await withScratchDirectory(label, body) }
    let directory = "/dev/shm/custody-\(label)-\(UUID().uuidString)"
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

extension LedgerStore {
    /// Reads one snapshot and closes the store.
    func readAndClose<R>(_ body: (LedgerSnapshot) throws -> R) throws -> R {
        defer { close() }
        return try read(body)
    }
}
