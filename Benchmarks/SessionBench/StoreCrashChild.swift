import ArgumentParser
import Foundation
import LMDBStorage

/// A child process for the broker store's power-loss test (the store opened with its
/// deferred meta flush): puts messages forever (and now
/// and then deletes a key that is not there, a commit that changes nothing) and prints one
/// line per durable put, so that a parent can check what a flush left on disk.
struct StoreCrashChild: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store-crash-child", abstract: "Test helper: stores messages until killed.", shouldDisplay: false)

    @Option(help: "Broker store directory.")
    var dataDir: String

    @Option(help: "Submissions in flight at once.")
    var window: Int = 16

    func run() throws {
        // The deferred meta flush is the mode whose answers a power loss could outrun.
        let store = try BrokerStore(directory: dataDir, options: BrokerStoreOptions(deferredMetaSync: true))
        exitWhenOrphaned()
        emit("ready")
        let gate = DispatchSemaphore(value: window)
        var i = 0
        while true {
            gate.wait()
            let key = "m-\(i)"
            let operation: BrokerStoreOperation = i % 7 == 3
                ? .delete(.messages, key: Array("absent-\(i)".utf8))
                : .put(.messages, key: Array(key.utf8), value: [UInt8](repeating: UInt8(i & 0xff), count: 64))
            let put = i % 7 != 3
            store.submit([operation]) { result in
                switch result {
                case .success: if put { emit("stored \(key)") }
                case .failure(let error): emit("failed \(key) \(error)")
                }
                gate.signal()
            }
            i += 1
        }
    }
}
