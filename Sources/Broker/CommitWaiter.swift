// What a store commit's waiters get: an async wait for handlers, a blocking one for init.
import LedgerCore
import Foundation
import LMDBStorage
import Synchronization

/// Resolves once a store commit is known; waiters may come before or after, and several may
/// wait. One is made per durable PUBLISH: its lock is inline (no allocation of its own), and
/// the usual single waiter needs no array.
final class CommitWaiter: Sendable {
    typealias Callback = @Sendable (Result<Void, LedgerError>) -> Void

    private struct State {
        var result: Result<Void, LedgerError>?
        var first: Callback?
        var more: [Callback] = []
    }
    private let state = Mutex(State())

    func complete(_ value: Result<Void, LedgerError>) {
        let (first, more) = state.withLock { state -> (Callback?, [Callback]) in
            state.result = value
            defer {
                state.first = nil
                state.more = []
            }
            return (state.first, state.more)
        }
        first?(value)
        for callback in more { callback(value) }
    }

    /// `callback` hears the result: at once (on this thread) when it is known, else on the
    /// thread that completes the commit.
    func whenComplete(_ callback: @escaping Callback) {
        let known = state.withLock { state -> Result<Void, LedgerError>? in
            if let result = state.result { return result }
            if state.first == nil { state.first = callback } else { state.more.append(callback) }
            return nil
        }
        if let known { callback(known) }
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
