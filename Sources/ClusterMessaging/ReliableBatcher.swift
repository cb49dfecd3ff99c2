// QoS 1/2 messages to the message stream, several per JetStream message (issue 19's speed):
// nats-server's cost is per stored message, so the publishing node groups the PUBLISHes its
// clients sent within `linger` of the first one waiting (and while its NATS connection's
// event loop was busy), by subject (one batch holds
// messages of one topic only, in order, so that subject filters, the node consumers and a
// session move's per-filter reads keep working), and stores each group as one message
// (`ClusterMessageCodec` version 2). Every message of a batch is answered (its PUBACK or
// PUBREC goes on) when JetStream acknowledges the batch; a batch's Nats-Msg-Id (its number)
// makes a repeat of it harmless, as one message's did.
//
// Messages are added under the broker's lock, in its order; batches are numbered and handed
// to NATS on the connection's event loop, in the order they were started, so two batches of
// one subject reach the stream in their order.
import MQTTCodec
import NIOCore
import Synchronization

final class ReliableBatcher: Sendable {
    /// Stores one batch: (subject, payload, batch number) to the stream's acknowledgement.
    typealias Store = @Sendable (String, ByteBuffer, UInt64) -> EventLoopFuture<Void>

    private struct Batch {
        var subject: String
        var payload: ByteBuffer
        var count: Int
        let promise: EventLoopPromise<Void>
    }

    private struct State {
        /// Batches not yet handed to NATS, in the order they were started.
        var waiting: [Batch] = []
        /// The batch of each subject that still takes messages (an index into `waiting`).
        var open: [String: Int] = [:]
        var flushScheduled = false
        /// The number of the last batch handed to NATS.
        var lastNumber: UInt64 = 0
    }

    let loop: any EventLoop
    let maxMessages: Int
    let maxBytes: Int
    /// How long the first message of a round waits for others to join it (0: the loop's next turn).
    let linger: TimeAmount
    private let store: Store
    private let state = Mutex(State())

    /// `maxMessages` 1: every message is stored alone, as version 1 of the codec.
    init(loop: any EventLoop, maxMessages: Int, maxBytes: Int, linger: TimeAmount = .zero, store: @escaping Store) {
        self.loop = loop
        self.linger = linger
        self.maxMessages = max(1, maxMessages)
        self.maxBytes = maxBytes
        self.store = store
    }

    /// Adds one encoded PUBLISH packet on `subject`; the future succeeds once JetStream has
    /// stored the batch it went into (and fails as that store does).
    func add(_ packet: ByteBuffer, subject: String) -> EventLoopFuture<Void> {
        var packet = packet
        let (future, schedule) = state.withLock { state -> (EventLoopFuture<Void>, Bool) in
            if let index = state.open[subject], state.waiting[index].count < maxMessages,
                state.waiting[index].payload.readableBytes + packet.readableBytes <= maxBytes
            {
                state.waiting[index].payload.writeBuffer(&packet)
                state.waiting[index].count += 1
                return (state.waiting[index].promise.futureResult, false)
            }
            let batch = Batch(subject: subject, payload: packet, count: 1, promise: loop.makePromise(of: Void.self))
            state.open[subject] = state.waiting.count
            state.waiting.append(batch)
            defer { state.flushScheduled = true }
            return (batch.promise.futureResult, !state.flushScheduled)
        }
        if schedule {
            if linger > .zero {
                loop.scheduleTask(in: linger) { self.flush() }
            } else {
                loop.execute { self.flush() }
            }
        }
        return future
    }

    /// Hands every waiting batch to NATS (on the loop).
    private func flush() {
        let (batches, first) = state.withLock { state -> ([Batch], UInt64) in
            let batches = state.waiting
            let first = state.lastNumber + 1
            state.lastNumber += UInt64(batches.count)
            state.waiting = []
            state.open = [:]
            state.flushScheduled = false
            return (batches, first)
        }
        for (offset, batch) in batches.enumerated() {
            batch.promise.completeWith(store(batch.subject, batch.payload, first + UInt64(offset)))
        }
    }

    /// Hands what waits to NATS now; returns the number of the last batch handed to it (every
    /// message added before this call is in a batch of at most that number).
    func flushed() async -> UInt64 {
        (try? await loop.submit { () -> UInt64 in
            self.flush()
            return self.state.withLock { $0.lastNumber }
        }.get()) ?? state.withLock { $0.lastNumber }
    }
}
