// What a store commit's waiters get: an async wait for handlers, a blocking one for init.
import LedgerCore
import Foundation
import LMDBStorage

/// Resolves once a store commit is known; waiters may come before or after, and several may wait.
final class CommitWaiter: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<Void, LedgerError>?
    private var continuations: [CheckedContinuation<Result<Void, LedgerError>, Never>] = []

    func complete(_ value: Result<Void, LedgerError>) {
        lock.lock()
        result = value
        let waiting = continuations
        continuations = []
        lock.unlock()
        for continuation in waiting { continuation.resume(returning: value) }
    }

    func wait() async -> Result<Void, LedgerError> {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let result {
                lock.unlock()
                continuation.resume(returning: result)
            } else {
                continuations.append(continuation)
                lock.unlock()
            }
        }
    }
}

/// The result of a commit waited for synchronously (`Broker.commitBlocking`).
final class CommitOutcome: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<Void, LedgerError> = .success(())
    func set(_ value: Result<Void, LedgerError>) { lock.lock(); result = value; lock.unlock() }
    func get() throws(LedgerError) { lock.lock(); defer { lock.unlock() }; try result.get() }
}

extension Result {
    var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }
}
