import Foundation
import MQTTCodec
import NIOCore
import Testing

/// The siege, in a process of its own: thousands of sockets held by the test process itself
/// would be there for every other test's `Process.run` (Foundation's crashed copying them), and
/// the test process's descriptor limit is not this test's to raise. Opens `count` connections
/// that each send `half` (half a CONNECT) and nothing more, says `OPENED <n>`, then waits until
/// the server has closed them all and says `CLOSED <n> <seconds>` (or `OPEN <n>` at the deadline).
private let siegeScript = #"""
import resource, select, socket, sys, time
port, count, half, deadline = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = count + 100
if soft < want:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    soft = min(want, hard)
count = min(count, soft - 100)
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(half)
    socks.append(s)
print("OPENED %d" % count, flush=True)
start = time.monotonic()
poller = select.poll()
open_ = {s.fileno(): s for s in socks}
for fd in open_:
    poller.register(fd, select.POLLIN | select.POLLHUP)
while open_ and time.monotonic() - start < deadline:
    for fd, _ in poller.poll(1000):
        s = open_.get(fd)
        if s is None:
            continue
        try:
            data = s.recv(1)
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)
            del open_[fd]
if open_:
    print("OPEN %d" % len(open_), flush=True)
else:
    print("CLOSED %d %.2f" % (count, time.monotonic() - start), flush=True)
"""#

/// Slowloris: 2,000 connections that send half a CONNECT and then nothing. Each is closed by the
/// connect timeout (2 s here), custody stays nearly idle meanwhile (a timer each, no polling),
/// and the timeouts are counted and logged at a bounded rate, not a line each.
@Suite("Slowloris")
struct SlowlorisTests {
    /// CPU ticks (user + system, 100 a second) of a process, from /proc.
    private func cpuTicks(_ pid: Int32) throws -> Int {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        let fields = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")
        return Int(fields[11])! + Int(fields[12])!
    }

    @Test func halfConnectsAreClosedByTheConnectTimeoutWhileCustodyIdles() async throws {
        try await offPool {
            let count = 2_000
            // custody gets descriptors enough for the siege whatever it inherits (prlimit only
            // lowers or raises up to the hard limit; without it, what the tests run with).
            let launcher = FileManager.default.isExecutableFile(atPath: "/usr/bin/prlimit")
                ? ["/usr/bin/prlimit", "--nofile=\(count + 1_000)", "--"] : []
            let custody = try RunningCustody(
                "slowloris", arguments: ["--connect-timeout-seconds", "2", "--metrics", "127.0.0.1:0"], launcher: launcher)
            defer { custody.cleanUp() }
            var connect = ByteBuffer()
            try MQTTEncoder(protocolVersion: .mqtt5).encode(
                .connect(MQTTConnect(protocolVersion: .mqtt5, clientIdentifier: "slow-client-with-a-long-name")), into: &connect)
            let half = connect.readableBytesView.prefix(connect.readableBytes / 2).map { String(format: "%02x", $0) }.joined()
            let siege = try Background(try pahoPython(), ["-c", siegeScript, "\(custody.port)", "\(count)", half, "20"])
            defer { siege.stop() }

            let opened = try siege.waitForOutput(containing: "OPENED", timeout: 60)
            let pid = custody.process.processIdentifier
            let before = try cpuTicks(pid)
            let started = Date()
            let last = try siege.waitForOutput(containing: "CLOSED", timeout: 30)
            let waited = Date().timeIntervalSince(started)
            let used = try cpuTicks(pid) - before

            let sieged = Int(opened.split(separator: "\n").first { $0.hasPrefix("OPENED") }!.split(separator: " ")[1])!
            if sieged < count {
                Issue.record("the hard descriptor limit allowed \(sieged) connections, not \(count)")
            }
            // All closed, and by the connect timeout (counted as that limit, one each).
            #expect(last.contains("CLOSED \(sieged) "), "\(last)")
            // Under 20% of one core while it waited (100 ticks a second), the closes included.
            #expect(Double(used) < 0.2 * 100 * max(waited, 1), "custody used \(used) ticks in \(waited) s")
            #expect(try custody.limitExceeded("connectTimeoutSeconds") == sieged)
            let lines = custody.limitLines("connectTimeoutSeconds").count
            #expect(lines >= 1 && lines <= 20, "\(lines) lines for \(sieged) timeouts")
            // Nothing reached the ledger, and custody still serves.
            #expect(try custody.events().isEmpty)
            #expect(try RawClient(port: custody.port).connect("after-the-siege").reasonCode == .success)
        }
    }
}
