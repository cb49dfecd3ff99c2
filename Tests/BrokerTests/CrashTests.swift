import CustodyTesting
import Foundation
import LedgerCore
import MQTTCodec
import Testing

@testable import Broker

private let childDirectoryVariable = "CUSTODY_BROKER_CRASH_CHILD"
private let childRoundVariable = "CUSTODY_BROKER_CRASH_ROUND"

/// Lines seen on the child's stdout, for the parent to count.
private final class AckLog: @unchecked Sendable {
    private let lock = NSLock()
    private var acked: [String] = []
    private var ready = false

    func add(_ line: Substring) {
        lock.lock()
        if line == "ready" { ready = true } else if line.hasPrefix("acked ") { acked.append(String(line.dropFirst(6))) }
        lock.unlock()
    }

    var count: Int { lock.lock(); defer { lock.unlock() }; return acked.count }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return acked }
}

@Suite("Crash")
struct CrashTests {
    /// Not a test on its own: the body of the child process that `acknowledgedMessagesSurviveSIGKILL`
    /// starts (this same test binary, filtered to this test, with the variable set). It
    /// publishes QoS 1 messages for a detached persistent session from several publishers
    /// and prints each PUBACK it gets, until it is killed. Anywhere else it is reported as
    /// skipped, not as a pass that tested nothing.
    @Test(.enabled(if: ProcessInfo.processInfo.environment[childDirectoryVariable] != nil, "only in the child process"))
    func crashWriterChild() async throws {
        let directory = try #require(ProcessInfo.processInfo.environment[childDirectoryVariable])
        let round = ProcessInfo.processInfo.environment[childRoundVariable] ?? "0"
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 1_000_000, queueMaxBytes: 1 << 40))
        let sub = broker.connect("sub", persistent: true, present: true)
        _ = try await sub.session.handle(subscribe([("t/#", .atLeastOnce)]))
        broker.detach(sub.session)
        let out = FileHandle.standardOutput
        out.write(Data("ready\n".utf8))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for p in 0..<8 {
                group.addTask {
                    let client = broker.connect("pub\(p)")
                    var i = 0
                    while i < 1_000_000 {
                        i += 1
                        let body = "\(round)-\(p)-\(i)"
                        let id = UInt16(i % 65535 + 1)
                        let answers = try await client.session.handle(publish("t/\(p)", body, qos: .atLeastOnce, id: id))
                        guard answers == [.puback(ack(id))] else { fatalError("unexpected answer \(answers)") }
                        // One write(2) per line: lines from the publishers do not interleave.
                        out.write(Data("acked \(body)\n".utf8))
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    @Test func acknowledgedMessagesSurviveSIGKILL() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let executable = URL(fileURLWithPath: CommandLine.arguments[0])
        var acknowledged: [String] = []
        for round in 1...3 {
            let child = Process()
            child.executableURL = executable
            child.arguments = ["--testing-library", "swift-testing", "--filter", "crashWriterChild"]
            var environment = ProcessInfo.processInfo.environment
            environment[childDirectoryVariable] = directory
            environment[childRoundVariable] = "\(round)"
            child.environment = environment
            let pipe = Pipe()
            child.standardOutput = pipe
            child.standardError = FileHandle.nullDevice
            try child.run()
            let log = AckLog()
            let reader = Thread {
                var pending = Data()
                let handle = pipe.fileHandleForReading
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    pending.append(chunk)
                    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                        let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                        log.add(line[...])
                        pending.removeSubrange(pending.startIndex...newline)
                    }
                }
            }
            reader.start()
            let target = Int.random(in: 200...1500)
            let deadline = ContinuousClock.now + .seconds(60)
            while log.count < target && ContinuousClock.now < deadline && child.isRunning {
                try await Task.sleep(for: .milliseconds(5))
            }
            kill(child.processIdentifier, SIGKILL)
            try await offPool { child.waitUntilExit() }
            #expect(child.terminationReason == .uncaughtSignal)
            // Let the reader take what the pipe still holds.
            try await Task.sleep(for: .milliseconds(100))
            #expect(log.count > 0, "the child acknowledged nothing in round \(round)")
            acknowledged += log.all
        }
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 1_000_000, queueMaxBytes: 1 << 40))
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true, present: true)
        // More may be stored than one in-flight window (65,535) holds when the child ran
        // fast: acknowledge each delivery so that the rest comes out, in order.
        var got: [String] = []
        while true {
            let batch = sub.sink.takePublishes()
            if batch.isEmpty { break }
            got += batch.map(text)
            for publish in batch { _ = try await sub.session.handle(.puback(ack(publish.packetIdentifier!))) }
        }
        let received = Set(got)
        let lost = acknowledged.filter { !received.contains($0) }
        print("crash: \(acknowledged.count) acknowledged over 3 SIGKILLs, \(received.count) stored, \(lost.count) lost")
        #expect(lost.isEmpty, "acknowledged but lost: \(lost.prefix(10))")
        #expect(received.count == got.count, "each stored once")
        // Per publisher and run, what is stored comes back in publish order.
        var last: [Substring: Int] = [:]
        for body in got {
            let parts = body.split(separator: "-")
            let publisher = body[body.startIndex..<parts[2].startIndex]
            let n = Int(parts[2])!
            #expect(n > last[publisher, default: 0], "\(body) after \(last[publisher, default: 0])")
            last[publisher] = n
        }
    }
}
