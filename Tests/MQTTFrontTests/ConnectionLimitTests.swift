import Foundation
import MQTTCodec
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Connections in all (`limits.maxConnections`; by default the descriptor limit less a reserve):
/// one past the maximum is accepted and closed at once, counted, with rate-limited lines; those
/// already in are served as before; once one goes, a new one gets in.
@Suite("Connection limit")
struct ConnectionLimitTests {
    /// True when the server closes `fd` within `timeout` seconds (having sent nothing).
    private func closedByServer(_ fd: Int32, within timeout: Double) -> Bool {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) > 0 else { return false }
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    @Test func onePastTheMaximumIsClosedAtOnceAndTheOthersAreServed() async throws {
        try await offPool {
            try withCustody("max-connections", ["--max-connections", "5", "--metrics", "127.0.0.1:0"]) { custody in
                #expect(custody.stdout.contains("custody: limits max_connections=5 "), "\(custody.stdout)")
                var clients: [RawClient] = []
                for index in 0..<3 {
                    let client = try RawClient(port: custody.port)
                    #expect(try client.connect("in-\(index)").reasonCode == .success)
                    clients.append(client)
                }
                // Two that have not sent their CONNECT yet count too.
                var silent = [try connectedSocket(port: custody.port), try connectedSocket(port: custody.port)]
                defer { for fd in silent { close(fd) } }
                // Accepted in the order they came; a moment for custody to count the two.
                usleep(200_000)
                #expect(try clients[0].isServed())
                var refused: [Int32] = []
                defer { for fd in refused { close(fd) } }
                for _ in 0..<30 { refused.append(try connectedSocket(port: custody.port)) }
                for fd in refused { #expect(closedByServer(fd, within: 5), "a connection past the maximum stayed open") }
                for client in clients { #expect(try client.isServed()) }
                #expect(try custody.limitExceeded("maxConnections") == 30)
                // Rate-limited: not a line per refused connection.
                let lines = custody.limitLines("maxConnections")
                #expect(!lines.isEmpty && lines.count <= 10, "\(lines.count) lines")

                // One goes; a new client gets in (once custody has seen it go).
                close(silent.removeLast())
                var admitted = false
                let deadline = Date().addingTimeInterval(10)
                while !admitted, Date() < deadline {
                    let late = try RawClient(port: custody.port)
                    admitted = (try? late.connect("late"))?.reasonCode == .success
                    if admitted { clients.append(late) } else { usleep(50_000) }
                }
                #expect(admitted)
            }
            let (status, _, error) = try run(product: "custody", ["--max-connections", "0"])
            #expect(status != 0)
            #expect(error.contains("--max-connections"), "\(error)")
        }
    }

    /// Without the flag: the descriptor limit (256 here) less a reserve of 64.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit")))
    func theDefaultComesFromTheDescriptorLimit() async throws {
        try await offPool {
            let custody = try RunningCustody("nofile-default", launcher: ["/usr/bin/prlimit", "--nofile=256", "--"])
            defer { custody.cleanUp() }
            #expect(custody.stdout.contains("custody: limits max_connections=192 (descriptor limit 256)"), "\(custody.stdout)")
        }
    }
}
