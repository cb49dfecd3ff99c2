import Foundation

/// A Python 3 HTTP server of the tests in its own scratch directory: `script` prints its port
/// on its first line and gets the directory as its argument. Stopped (and the directory
/// removed) by `stop`, or when released.
final class PythonServer: @unchecked Sendable {
    let process = Process()
    let port: Int
    let directory: String

    init(_ label: String, script: String, name: String) throws {
        directory = scratchDirectory(label)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let scriptPath = directory + "/server.py"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        let out = Pipe()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-u", scriptPath, directory]
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        let deadline = Date().addingTimeInterval(10)
        while !line.contains(UInt8(ascii: "\n")), Date() < deadline {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        guard let text = String(data: line, encoding: .utf8),
            let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
        else {
            process.terminate()
            throw TestFailure.unexpected("\(name) did not start")
        }
        self.port = port
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { stop() }
}
