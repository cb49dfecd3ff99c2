import Foundation
import MQTTCodec
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// custody out of descriptors (`prlimit --nofile=256`, 400 idle connections): it pauses
/// accepting instead of spinning, says so once, and a normal client gets in once the others
/// go (issue 15, defect 3).
@Suite("Descriptor limit")
struct DescriptorLimitTests {
    /// CPU ticks (user + system) of a process, from /proc.
    private func cpuTicks(_ pid: Int32) throws -> Int {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        // Fields after the command (in parentheses): utime and stime are the 12th and 13th.
        let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
        return Int(fields[11])! + Int(fields[12])!
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit")))
    func atTheDescriptorLimitAcceptingPausesQuietlyAndResumes() async throws {
        try await offPool {
            let custody = try RunningCustody(
                // --max-connections above the descriptor limit: this is about running out of
                // descriptors, which the connection limit (ConnectionLimitTests) normally prevents.
                "nofile", arguments: [
                    "--log-level", "notice", "--connect-timeout-seconds", "30", "--max-connections", "1000",
                ],
                launcher: ["/usr/bin/prlimit", "--nofile=256", "--"])
            defer { custody.cleanUp() }
            var idle: [Int32] = []
            defer { for fd in idle { close(fd) } }
            for _ in 0..<400 { idle.append(try connectedSocket(port: custody.port)) }
            try custody.waitForLog("accept paused", timeout: 10)
            let pid = custody.process.processIdentifier
            let before = try cpuTicks(pid)
            Thread.sleep(forTimeInterval: 3)
            let used = try cpuTicks(pid) - before
            // Under 5% of one core over 3 s (100 ticks a second).
            #expect(used < 15, "custody used \(used) ticks in 3 s at the descriptor limit")
            // Accepting leaves descriptors to the rest of the process (libdispatch traps when it
            // cannot open one): the clients never take the last 16.
            let open = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
            #expect(open <= 256 - 8, "custody holds \(open) of its 256 descriptors")
            let paused = custody.stderr.components(separatedBy: "accept paused").count - 1
            #expect(paused == 1, "one line per pause, not per retry:\n\(custody.stderr.prefix(2000))")
            for fd in idle { close(fd) }
            idle = []
            let client = try RawClient(port: custody.port)
            let connack = try client.connect("after-the-storm")
            #expect(connack.reasonCode == .success)
            try custody.waitForLog("accept resumed", timeout: 10)
        }
    }
}
