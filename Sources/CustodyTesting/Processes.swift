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
