import NIOCore
import SessionLedger
import Synchronization

/// While the front shuts down, the ends of the connections it closes are collected here and
/// recorded in the ledger together (`SessionAuthority.releaseAll`): one commit, one fsync and
/// one timestamp for every `disconnected(serverInitiatedDisconnect)`. Outside a shutdown
/// (and after the batch went) each release goes to the ledger on its own.
final class ShutdownBatch: Sendable {
    typealias Done = @Sendable (Result<LedgerEvent?, LedgerError>) -> Void

    private let waiting = Mutex<[(ReleaseRequest, Done)]?>(nil)

    /// From now on releases wait for `flush`.
    func begin() {
        waiting.withLock { if $0 == nil { $0 = [] } }
    }

    /// Takes the release into the batch; false when no batch is being collected.
    func add(_ request: ReleaseRequest, _ done: @escaping Done) -> Bool {
        waiting.withLock { waiting in
            guard waiting != nil else { return false }
            waiting!.append((request, done))
            return true
        }
    }

    /// Records every collected release in one ledger commit and answers each; later
    /// releases go on their own. Returns how many were in the batch.
    @discardableResult
    func flush(to ledger: any SessionAuthority) -> Int {
        let batch = waiting.withLock { waiting in
            defer { waiting = nil }
            return waiting ?? []
        }
        guard !batch.isEmpty else { return 0 }
        ledger.releaseAll(batch.map(\.0)) { result in
            switch result {
            case .success(let events):
                for (index, (_, done)) in batch.enumerated() { done(.success(events[index])) }
            case .failure(let error):
                for (_, done) in batch { done(.failure(error)) }
            }
        }
        return batch.count
    }
}

extension FrontServices {
    /// Records the end of a connection: in the shutdown batch while one is collected, else at once.
    func release(_ request: ReleaseRequest, _ done: @escaping ShutdownBatch.Done) {
        if shutdownBatch.add(request, done) { return }
        ledger.release(request, done)
    }
}
