import Foundation
import LMDBStorage
import LedgerCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `custody` on 127.0.0.1 with a free port and its own ledger; stopped (SIGTERM) by `stop()`.
public final class RunningCustody: @unchecked Sendable {
    public let process = Process()
    public let directory: String
    public let stdoutPath: String
    public let stderrPath: String
    public private(set) var port = 0
    private var stopped = false

    /// `directory`: the data directory (a fresh one by default). Unless `ownFlags`, custody
    /// is told `--data-dir directory --listen 127.0.0.1:0` before `arguments`; with
    /// `ownFlags` it gets `arguments` alone (a test of a configuration file, say).
    /// `launcher`: a command that execs custody with the arguments that follow (e.g.
    /// `prlimit --nofile=256 --`); the process keeps custody's pid.
    public init(
        _ label: String, arguments: [String] = [], directory: String? = nil, ownFlags: Bool = false,
        launcher: [String] = []
    ) throws {
        self.directory = directory ?? scratchDirectory("front-\(label)")
        stdoutPath = self.directory + ".out"
        stderrPath = self.directory + ".err"
        try start(ownFlags ? arguments : ["--data-dir", self.directory, "--listen", "127.0.0.1:0"] + arguments, launcher)
    }

    private func start(_ arguments: [String], _ launcher: [String]) throws {
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        if let command = launcher.first {
            process.executableURL = URL(fileURLWithPath: command)
            process.arguments = Array(launcher.dropFirst()) + [try builtProduct("custody").path] + arguments
        } else {
            process.executableURL = try builtProduct("custody")
            process.arguments = arguments
        }
        // Files, not pipes: nobody has to drain them for custody to keep running.
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: stdoutPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        try process.run()
        let line = try waitForOutput(containing: "custody: running", timeout: 30)
        _ = line
        guard let listening = stdout.split(separator: "\n").first(where: { $0.hasPrefix("custody: listening mqtt 127.0.0.1:") }),
            let port = Int(listening.split(separator: ":").last ?? "")
        else {
            // Only a ledger (`listeners: []` with a ledger socket): no MQTT port.
            if stdout.contains("custody: ledger socket "), !stdout.contains("custody: listening ") { return }
            throw TestFailure.unexpected("no listening line in:\n\(stdout)\n\(stderr)")
        }
        self.port = port
    }

    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    @discardableResult
    public func waitForOutput(containing text: String, timeout: Double) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let out = stdout
            if out.contains(text) { return out }
            guard process.isRunning else { throw TestFailure.unexpected("custody exited: \(out)\n\(stderr)") }
            usleep(10_000)
        }
        throw TestFailure.timeout("\(text) in custody's output:\n\(stdout)\n\(stderr)")
    }

    /// Waits for a log line (standard error) containing all of `parts`.
    @discardableResult
    public func waitForLog(_ parts: String..., timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let line = stderr.split(separator: "\n").first(where: { line in parts.allSatisfy { line.contains($0) } }) {
                return String(line)
            }
            usleep(10_000)
        }
        throw TestFailure.timeout("log line with \(parts):\n\(stderr)")
    }

    public func stop() {
        guard !stopped else { return }
        stopped = true
        guard process.isRunning else { return }
        process.terminate()  // SIGTERM: custody closes connections and the ledger
        let deadline = Date().addingTimeInterval(15)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            // Where it hangs, for whoever reads the failure.
            let stacks = (try? run("/usr/bin/gdb", [
                "-p", "\(process.processIdentifier)", "-batch", "-ex", "thread apply all bt 25",
            ], timeout: 60).1) ?? "(no gdb)"
            Issue.record("custody did not stop on SIGTERM\n\(stdout)\n\(stderr)\n\(stacks)")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
    }

    /// Every event in the ledger so far (read-only, while custody runs).
    public func events() throws -> [LedgerEvent] {
        let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
        defer { store.close() }
        return try store.read { snapshot in
            let head = try snapshot.head().sequence
            guard head > 0 else { return [] }
            return try (1...head).compactMap { try snapshot.record(at: $0)?.event }
        }
    }

    /// Waits until the ledger holds an event that satisfies `match`.
    @discardableResult
    public func waitForEvent(timeout: Double = 10, _ match: (LedgerEvent) -> Bool) throws -> LedgerEvent {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let event = try events().first(where: match) { return event }
            usleep(20_000)
        }
        throw TestFailure.timeout("ledger event; have \(try events().map { "\($0.kind) \($0.sessionName)" })")
    }

    public func cleanUp() {
        stop()
        for path in [directory, stdoutPath, stderrPath] { try? FileManager.default.removeItem(atPath: path) }
    }

    deinit { stop() }
}

/// Runs `body` against its own `custody` (stopped and removed afterwards); when it fails,

/// Runs `body` against its own `custody` (stopped and removed afterwards); when it fails,
/// custody's output goes into the test's issues.
public func withCustody(
    _ label: String, _ arguments: [String] = [], directory: String? = nil, _ body: (RunningCustody) throws -> Void
) throws {
    let custody = try RunningCustody(label, arguments: arguments, directory: directory)
    defer { custody.cleanUp() }
    do {
        try body(custody)
    } catch {
        Issue.record("custody output:\n\(custody.stdout)\ncustody log:\n\(custody.stderr)")
        throw error
    }
}
