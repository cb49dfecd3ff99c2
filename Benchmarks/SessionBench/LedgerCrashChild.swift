import ArgumentParser
import Foundation
import LMDBStorage
import SessionLedger

/// A child process for the crash test: claims (and now and then releases) sessions
/// forever and prints one line per durable grant, so that a parent can SIGKILL it at
/// any moment and check that everything it was told is in the reopened ledger.
struct LedgerCrashChild: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger-crash-child", abstract: "Test helper: appends claims until killed.", shouldDisplay: false)

    @Option(help: "Ledger directory.")
    var dataDir: String

    @Option(help: "A prefix that makes this round's session names unique.")
    var prefix: String

    @Option(help: "Claims in flight at once.")
    var window: Int = 64

    @Option(help: "With archiving: a checkpoint every N records, and the live log archived past --max-live-bytes.")
    var checkpointEvery: UInt64?

    @Option(help: "With --checkpoint-every: archive the oldest spans while the live log's pages take more than this.")
    var maxLiveBytes: Int = 64 << 10

    func run() throws {
        let policy = try NamespacePolicy(maximumClientSessionsPerAuthenticationName: 100)
        let ledger: LMDBSessionLedger
        if let checkpointEvery {
            ledger = try LMDBSessionLedger(
                directory: dataDir, policy: policy, checkpointEvery: checkpointEvery,
                archive: LedgerArchiver.Policy(retention: nil, maxLiveBytes: maxLiveBytes, deleteBatch: 50, interval: 0.005))
            ledger.startArchiving(onArchived: { emit("archived \($0.name)") })
        } else {
            ledger = try LMDBSessionLedger(directory: dataDir, policy: policy)
        }
        exitWhenOrphaned()
        emit("ready head=\(ledger.head.sequence)")
        let gate = DispatchSemaphore(value: window)
        var i = 0
        while true {
            gate.wait()
            let name = "\(prefix)-\(i)"
            let connection = ledger.nextConnectionNumber()
            let request = ClaimRequest(
                authenticationName: AuthenticationName(unchecked: "\(prefix)-client-\(i % 1000)"),
                sessionName: SessionName(unchecked: name), connection: connection,
                requestedExpiryInterval: i % 3 == 0 ? 0 : 600)
            let release = i % 2 == 0
            ledger.claim(request) { result in
                guard case .success(.granted(let grant)) = result else {
                    emit("failed \(name) \(result)")
                    gate.signal()
                    return
                }
                emit("granted \(name) \(grant.sequence)")
                if release {
                    ledger.release(ReleaseRequest(sessionName: SessionName(unchecked: name), connection: connection, reason: .clientInitiatedDisconnect)) { result in
                        if case .success(.some(let event)) = result { emit("released \(name) \(event.sequence)") }
                        gate.signal()
                    }
                } else {
                    gate.signal()
                }
            }
            i += 1
        }
    }
}

/// A crash child runs until killed; if its parent (the test) dies first, nobody would kill
/// it: it ends itself once it is orphaned.
func exitWhenOrphaned() {
    let parent = getppid()
    let watch = Thread {
        while getppid() == parent { usleep(100_000) }
        exit(2)
    }
    watch.start()
}

/// Writes a line straight to the pipe: a buffered line could die with the process.
func emit(_ line: String) {
    var text = line + "\n"
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let n = write(STDOUT_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
            if n <= 0 { return }
            offset += n
        }
    }
}
