import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs a process to its end (killed after `timeout` seconds) and returns its status,
/// standard output and standard error. Output goes to files, so a chatty child never blocks.
public func run(_ executable: String, _ arguments: [String], timeout: Double = 20) throws -> (Int32, String, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let base = scratchDirectory("proc")
    _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
    _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
    defer {
        try? FileManager.default.removeItem(atPath: base + ".out")
        try? FileManager.default.removeItem(atPath: base + ".err")
    }
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { usleep(10_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw TestFailure.timeout("\(executable) \(arguments)")
    }
    let out = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
    return (process.terminationStatus, out, err)
}

/// `run` for one of this package's executables.
public func run(product: String, _ arguments: [String], timeout: Double = 60) throws -> (Int32, String, String) {
    try run(builtProduct(product).path, arguments, timeout: timeout)
}

/// Starts a server that runs until killed, its standard output and error appended to `log`
/// (a restarted server's lines follow its earlier ones).
public func launchLogged(_ executable: String, _ arguments: [String], log: String) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    handle.seekToEndOfFile()
    process.standardOutput = handle
    process.standardError = handle
    try process.run()
    return process
}

/// SIGKILL, waited for; nothing when the process is not running.
public func killAndWait(_ process: Process?) {
    guard let process, process.isRunning else { return }
    kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
}

/// Asks `healthy` every 50 ms until it says yes; throws, with `log()`, when `process` ends
/// first or `timeout` seconds pass.
public func waitUntilHealthy(
    _ what: String, process: Process?, timeout: Double, log: () -> String, healthy: () -> Bool
) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        guard process?.isRunning == true else { throw TestFailure.unexpected("\(what) exited:\n\(log())") }
        if healthy() { return }
        usleep(50_000)
    }
    throw TestFailure.timeout("\(what) healthy:\n\(log())")
}
