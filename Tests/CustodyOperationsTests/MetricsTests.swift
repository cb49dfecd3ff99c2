import CustodyTesting
import Foundation
import Prometheus
import SessionLedger
import Testing

@testable import CustodyOperations

#if canImport(Glibc)
import Glibc
#endif

/// One HTTP/1.1 request over a real socket to 127.0.0.1; returns the status line's code and the body.
func httpRequest(port: Int, method: String = "GET", path: String) throws -> (status: Int, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
    let request = Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard write(fd, request, request.count) == request.count else { throw POSIXError(.EIO) }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        response.append(contentsOf: chunk[0..<n])
    }
    let text = String(decoding: response, as: UTF8.self)
    let status = Int(text.split(separator: " ", maxSplits: 2).dropFirst().first ?? "") ?? 0
    let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
    return (status, body)
}

/// The value of an unlabelled sample line `name value`.
func sample(_ name: String, in text: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
        return Double(line.dropFirst(name.count + 1))
    }
    return nil
}

@Suite("Metrics")
struct MetricsTests {
    @Test func theLedgersCommitsAreScrapedFromMetrics() async throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = LedgerMetrics(factory: PrometheusMetricsFactory.custody(registry: registry))
        let directory = scratchDirectory("metrics")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ledger = try LMDBSessionLedger(
            directory: directory, onCommit: { metrics.record($0) }, onCommitFailure: { metrics.recordFailure($0) })
        // Ten concurrent claims (group commit may join them) and one release.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<10 {
                group.addTask {
                    _ = try await ledger.claim(ClaimRequest(
                        authenticationName: AuthenticationName(unchecked: "client-\(i % 3)"),
                        sessionName: SessionName(unchecked: "s-\(i)"), connection: ledger.nextConnectionNumber()))
                }
            }
            try await group.waitForAll()
        }
        let events = ledger.head.sequence
        ledger.close()

        let endpoint = MetricsEndpoint(registry: registry)
        let port = try await endpoint.start(host: "127.0.0.1", port: 0)
        // The requests block on their sockets: off the pool, which the endpoint may need.
        let (status, body) = try await offPool { try httpRequest(port: port, path: "/metrics") }
        #expect(status == 200)
        #expect(sample("custody_ledger_events_total", in: body) == Double(events))
        #expect(sample("custody_ledger_requests_total", in: body) == 10)
        let commits = try #require(sample("custody_ledger_commits_total", in: body))
        #expect(commits >= 1 && commits <= 10)
        // Histograms: bucket lines, and a count equal to the commits.
        #expect(body.contains("custody_ledger_events_per_commit_bucket{le=\"1.0\"}"))
        #expect(sample("custody_ledger_events_per_commit_count", in: body) == commits)
        #expect(sample("custody_ledger_events_per_commit_sum", in: body) == Double(events))
        #expect(sample("custody_ledger_commit_duration_seconds_count", in: body) == commits)
        #expect(body.contains("custody_ledger_sync_duration_seconds_bucket{le=\"0.001\"}"))

        #expect(try await offPool { try httpRequest(port: port, path: "/other").status } == 404)
        #expect(try await offPool { try httpRequest(port: port, method: "POST", path: "/metrics").status } == 405)
        #expect(try await offPool { try httpRequest(port: port, path: "/metrics?x=1").status } == 200)
        await endpoint.stop()
        await #expect(throws: (any Error).self) { try await offPool { try httpRequest(port: port, path: "/metrics") } }
    }

    @Test func aFailedCommitIsCountedByKind() throws {
        let registry = PrometheusCollectorRegistry()
        let metrics = LedgerMetrics(factory: PrometheusMetricsFactory.custody(registry: registry))
        metrics.recordFailure(.storage(operation: "mdb_txn_commit", code: ENOSPC, message: "No space left on device"))
        metrics.recordFailure(.storage(operation: "mdb_txn_commit", code: ENOSPC, message: "No space left on device"))
        metrics.recordFailure(.storage(operation: "mdb_txn_commit", code: EIO, message: "Input/output error"))
        let text = registry.emitToString()
        #expect(text.contains("custody_ledger_commit_failures_total{kind=\"disk_full\"} 2"))
        #expect(text.contains("custody_ledger_commit_failures_total{kind=\"io_error\"} 1"))
    }
}
