// What a store commit's waiters get: an async wait for handlers, a blocking one for init.
import LedgerCore
import Foundation
import LMDBStorage

/// Resolves once a store commit is known; waiters may come before or after, and several may wait.
final class CommitWaiter: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Result<Void, LedgerError>?
    private var callbacks: [@Sendable (Result<Void, LedgerError>) -> Void] = []

    func complete(_ value: Result<Void, LedgerError>) {
        lock.lock()
        result = value
        let waiting = callbacks
        callbacks = []
        lock.unlock()
        for callback in waiting { callback(value) }
    }

    /// `callback` hears the result: at once (on this thread) when it is known, else on the
    /// thread that completes the commit.
    func whenComplete(_ callback: @escaping @Sendable (Result<Void, LedgerError>) -> Void) {
        lock.lock()
        if let result {
            lock.unlock()
            callback(result)
        } else {
            callbacks.append(callback)
            lock.unlock()
        }
    }

    func wait() async -> Result<Void, LedgerError> {
        await withCheckedContinuation { continuation in
            whenComplete { continuation.resume(returning: $0) }
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
