import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A process left running (mosquitto_sub, a paho script, custody-bench); its output (both
/// streams) is a file, read while it runs.
public final class SpawnedProcess: @unchecked Sendable {
    public let process = Process()
    public let outPath: String

    public init(_ executable: String, _ arguments: [String]) throws {
        outPath = scratchDirectory("spawned") + ".out"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    public var output: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }

    @discardableResult
    public func waitForOutput(containing text: String, timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.contains(text) { return output }
            if !process.isRunning, !output.contains(text) {
                throw TestFailure.unexpected("ended without \"\(text)\": \(output)")
            }
            usleep(10_000)
        }
        throw TestFailure.timeout("\"\(text)\" in: \(output)")
    }

    public func waitForExit(timeout: Double = 10) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { throw TestFailure.timeout("exit of \(process.arguments ?? []): \(output)") }
        return process.terminationStatus
    }

    /// SIGTERM: a paho script then sends DISCONNECT and ends.
    public func stop() throws {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        _ = try waitForExit()
    }

    public func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(atPath: outPath)
    }
}
