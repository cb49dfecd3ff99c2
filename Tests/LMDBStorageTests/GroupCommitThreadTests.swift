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

    /// A thread that records its batches and holds the batch `[0]` (saying so on
    /// `firstStarted`) until `release` is signalled.
    struct HeldFirst {
        let batches = Batches()
        let firstStarted = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)

        func thread(_ name: String) -> GroupCommitThread<Int> {
            GroupCommitThread<Int>(name: name) { [batches, firstStarted, release] batch in
                batches.seen.withLock { $0.append(batch) }
                if batch == [0] {
                    firstStarted.signal()
                    release.wait()
                }
            }
        }
    }

    /// Requests that arrive while a batch is processed are taken together as the next one,
    /// in order; a stop processes what is queued, then refuses.
    @Test func waitingRequestsFormOneBatchAndStopDrainsThenRefuses() async throws {
        try await offPool {
            let held = HeldFirst()
            let (batches, firstStarted, release) = (held.batches, held.firstStarted, held.release)
            let thread = held.thread("test-commit")
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

    /// `enqueueIfIdle(contentsOf:)` refuses while a batch is in hand or queued, and takes a request once
    /// the thread has found nothing queued (`beforeWaiting` has run): what the broker keeps
    /// back while the writer is busy goes from the idle hook, or at once to an idle writer.
    @Test func enqueueIfIdleTakesARequestOnlyWhenTheThreadIsIdle() async throws {
        try await offPool {
            let held = HeldFirst()
            let (batches, firstStarted, release) = (held.batches, held.firstStarted, held.release)
            let idle = DispatchSemaphore(value: 0)
            let thread = held.thread("test-idle")
            thread.beforeWaiting = { idle.signal() }
            thread.start()
            idle.wait()
            #expect(thread.enqueue(0))
            firstStarted.wait()
            // A batch in hand: refused, and nothing queued.
            #expect(!thread.enqueueIfIdle(contentsOf: [1]))
            #expect(thread.enqueue(2))
            // Still refused while a request waits in the queue.
            #expect(!thread.enqueueIfIdle(contentsOf: [3]))
            release.signal()
            // After [2] the thread finds nothing queued and says so before it waits.
            idle.wait()
            #expect(thread.enqueueIfIdle(contentsOf: [4, 5]))
            idle.wait()
            #expect(thread.stop())
            #expect(batches.seen.withLock { $0 } == [[0], [2], [4, 5]])
            #expect(!thread.enqueueIfIdle(contentsOf: [6]))
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
