import CustodyTesting
import Foundation
import Synchronization
import Testing

@testable import LMDBStorage

/// The one writer thread both stores use: batches, holding for urgent requests, stopping.
@Suite("Group-commit thread")
struct GroupCommitThreadTests {
    final class Batches: Sendable {
        let seen = Mutex<[[Int]]>([])
        let gate = NSCondition()
    }

    /// Requests that arrive while a batch is processed are taken together as the next one,
    /// in order; a stop processes what is queued, then refuses.
    @Test func waitingRequestsFormOneBatchAndStopDrainsThenRefuses() async throws {
        try await offPool {
            let batches = Batches()
            let firstStarted = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let thread = GroupCommitThread<Int>(name: "test-commit") { batch in
                batches.seen.withLock { $0.append(batch) }
                if batch == [0] {
                    firstStarted.signal()
                    release.wait()
                }
            }
            thread.start()
            #expect(thread.enqueue(0))
            firstStarted.wait()
            for value in 1...5 { #expect(thread.enqueue(value)) }
            release.signal()
            #expect(thread.stop())
            #expect(batches.seen.withLock { $0 } == [[0], [1, 2, 3, 4, 5]])
            #expect(!thread.enqueue(6))
            #expect(!thread.stop())
        }
    }

    /// A batch of non-urgent requests waits for an urgent one to share its commit.
    @Test func aNonUrgentBatchIsHeldForAnUrgentOne() async throws {
        try await offPool {
            let batches = Batches()
            let thread = GroupCommitThread<Int>(name: "test-hold", isUrgent: { $0 < 0 }) { batch in
                batches.seen.withLock { $0.append(batch) }
            }
            thread.holdDelay = 5
            thread.start()
            #expect(thread.enqueue(1))
            #expect(thread.enqueue(2))
            Thread.sleep(forTimeInterval: 0.05)
            #expect(batches.seen.withLock { $0 }.isEmpty)
            #expect(thread.enqueue(-1))
            thread.stop()
            #expect(batches.seen.withLock { $0 } == [[1, 2, -1]])
        }
    }
}
