// QoS 1/2 messages to the message stream, several per JetStream message (issue 19's speed):
// nats-server's cost is per stored message, so the publishing node groups the PUBLISHes its
// clients sent within `linger` of the first one waiting (and while its NATS connection's
// event loop was busy), by subject (one batch holds
// messages of one topic only, in order, so that subject filters, the node consumers and a
// session move's per-filter reads keep working), and stores each group as one message
// (`ClusterMessageCodec` version 2). Every message of a batch is answered (its PUBACK or
// PUBREC goes on) when JetStream acknowledges the batch: each message's callback, kept with the
// batch and called on the connection's event loop (a future per message, its callback added
// from the broker's thread, would cost a hop to that loop for every message); a batch's
// Nats-Msg-Id (its number) makes a repeat of it harmless, as one message's did.
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
    /// Hears how the batch a message went into was stored.
    typealias Answer = @Sendable (Result<Void, any Error>) -> Void

    private struct Batch {
        var subject: String
        var payload: ByteBuffer
        var count: Int
        var answers: [Answer]
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

    /// Adds one encoded PUBLISH packet on `subject`; `answer` hears (on the loop) once JetStream
    /// has stored the batch it went into, or failed to.
    func add(_ packet: ByteBuffer, subject: String, answer: @escaping Answer) {
        var packet = packet
        let schedule = state.withLock { state -> Bool in
            if let index = state.open[subject], state.waiting[index].count < maxMessages,
                state.waiting[index].payload.readableBytes + packet.readableBytes <= maxBytes
            {
                state.waiting[index].payload.writeBuffer(&packet)
                state.waiting[index].count += 1
                state.waiting[index].answers.append(answer)
                return false
            }
            let batch = Batch(subject: subject, payload: packet, count: 1, answers: [answer])
            state.open[subject] = state.waiting.count
            state.waiting.append(batch)
            defer { state.flushScheduled = true }
            return !state.flushScheduled
        }
        if schedule {
            if linger > .zero {
                loop.scheduleTask(in: linger) { self.flush() }
            } else {
                loop.execute { self.flush() }
            }
        }
    }

    /// `add` with a future (made on the loop) for the answer.
    func add(_ packet: ByteBuffer, subject: String) -> EventLoopFuture<Void> {
        let promise = loop.makePromise(of: Void.self)
        add(packet, subject: subject) { promise.completeWith($0) }
        return promise.futureResult
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
            let answers = batch.answers
            store(batch.subject, batch.payload, first + UInt64(offset)).hop(to: loop).whenComplete { result in
                for answer in answers { answer(result) }
            }
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
