import CustodyTesting
import Foundation
import LMDBStorage
import SessionLedger
import Testing

/// `custody` on a ledger whose map is full: it starts, recovers into the reserve, refuses
/// CONNECTs with 0x88 and records disconnects; it never exits for want of room.
@Suite("custody on a full ledger")
struct FullLedgerTests {
    @Test("A start on a full ledger runs, refuses a CONNECT with 0x88 and has recorded every restart disconnect")
    func startOnAFullLedger() async throws {
        // Blocking waits (claims, a child process): off the tasks' threads.
        try await offPool { try Self.startOnAFullLedgerBody(filledMiB: 1, startMiB: 1) }
    }

    @Test("A start with --ledger-map-size-mib lowered below the stored data runs, warns and refuses CONNECTs")
    func startBelowTheStoredData() async throws {
        try await offPool { try Self.startOnAFullLedgerBody(filledMiB: 3, startMiB: 1) }
    }

    static func startOnAFullLedgerBody(filledMiB: Int, startMiB: Int) throws {
        let directory = scratchDirectory("custody-full")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var granted = 0
        do {
            // A small map (1 MiB is the smallest --ledger-map-size-mib), filled with connected sessions.
            let ledger = try LMDBSessionLedger(directory: directory, mapSize: filledMiB << 20)
            let padding = String(repeating: "p", count: 60)
            for i in 0..<100_000 {
                let request = ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "device-\(i)-\(padding)"),
                    sessionName: SessionName(unchecked: "session-\(i)-\(padding)"),
                    connection: ledger.nextConnectionNumber(), requestedExpiryInterval: 600)
                guard (try? waitForClaim(ledger, request)) != nil else { break }
                granted += 1
            }
            ledger.close()  // every session still connected, as after a crash
        }
        #expect(granted > 50)
        let custody = try RunningCustody(
            "full", arguments: ["--ledger-map-size-mib", "\(startMiB)", "--retention-days", "0", "--retention-max-live-bytes", "0"],
            directory: directory)
        defer { custody.cleanUp() }
        #expect(custody.stdout.contains("disconnected_by_restart=\(granted)"), "\(custody.stdout)")
        #expect(custody.stdout.contains("in_reserve=1"), "\(custody.stdout)")
        if startMiB < filledMiB {
            #expect(custody.stdout.contains("custody: warning: the ledger holds"), "\(custody.stdout)")
        }
        let publish = Process()
        publish.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_pub")
        publish.arguments = ["-h", "127.0.0.1", "-p", "\(custody.port)", "-V", "5", "-i", "late-device", "-t", "t", "-m", "x"]
        let errors = Pipe()
        publish.standardError = errors
        publish.standardOutput = FileHandle.nullDevice
        try publish.run()
        publish.waitUntilExit()
        let said = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(publish.terminationStatus != 0)
        #expect(said.lowercased().contains("unavailable"), "\(said)")
        #expect(custody.process.isRunning)
        custody.stop()
        #expect(custody.process.terminationReason == .exit && custody.process.terminationStatus == 0, "\(custody.stderr)")
        let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
        defer { store.close() }
        #expect(try store.read { try $0.verify() }.isIntact)
    }
}
