// Messages of a JetStream pull consumer as they come: pull requests ($JS.API.CONSUMER.MSG.NEXT)
// kept outstanding on one inbox, and the acks (+ACK to each message's reply subject).
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Where a JetStream message stands, from its reply subject
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the form with a domain and an account hash before the stream).
public struct JetStreamMetadata: Sendable, Equatable {
    public var stream: String
    public var consumer: String
    /// 1 on the first delivery; more when it was delivered again (not acknowledged in time).
    public var delivered: UInt64
    public var streamSequence: UInt64
    public var consumerSequence: UInt64
    /// When the stream stored it: ns since the epoch.
    public var timestamp: Int64
    public var pending: UInt64

    public init?(replyTo: String?) {
        guard let tokens = replyTo?.split(separator: ".", omittingEmptySubsequences: false),
            tokens.count >= 9, tokens[0] == "$JS", tokens[1] == "ACK"
        else { return nil }
        let base = tokens.count == 9 ? 2 : 4
        guard let delivered = UInt64(tokens[base + 2]), let streamSequence = UInt64(tokens[base + 3]),
            let consumerSequence = UInt64(tokens[base + 4]), let timestamp = Int64(tokens[base + 5]),
            let pending = UInt64(tokens[base + 6])
        else { return nil }
        stream = String(tokens[base])
        consumer = String(tokens[base + 1])
        self.delivered = delivered
        self.streamSequence = streamSequence
        self.consumerSequence = consumerSequence
        self.timestamp = timestamp
        self.pending = pending
    }
}

/// A pull consumer's messages as they arrive, taken in batches of whatever has arrived. A pull
/// of `batch` stays outstanding until filled or expired, then the next is sent; a pull lost
/// with a server is sent again after `expires` and a second without a word from JetStream.
/// A filled pull is followed at once only while fewer than `batch` messages wait untaken;
/// otherwise once they are taken (`nextBatch`): a slow taker holds at most about two pulls'
/// worth, not everything the stream has (each of them nearer its ack wait).
public final class PullConsumer: @unchecked Sendable {
    public let stream: String
    public let consumer: String
    private let connection: NATSConnection
    private let inbox: String
    private let batch: Int
    private let expires: TimeAmount
    private let pullSubject: String
    private let lock = NIOLock()
    // Guarded by `lock`.
    private var received = 0
    private var lastWord = NIODeadline.now()
    private var sid: UInt64 = 0
    private var watchdog: RepeatedTask?
    private var stopped = false
    /// A pull filled while a full batch waited untaken: the next goes when they are taken.
    private var pullDue = false
    private var buffered: [NATSMessage] = []
    private var waiting: CheckedContinuation<[NATSMessage], Never>?

    public init(_ jetStream: JetStream, stream: String, consumer: String, batch: Int = 256, expires: TimeAmount = .seconds(5))
        throws
    {
        self.stream = stream
        self.consumer = consumer
        self.connection = jetStream.connection
        self.inbox = jetStream.connection.newInbox()
        self.batch = batch
        self.expires = expires
        let pullSubject = "\(jetStream.apiPrefix).CONSUMER.MSG.NEXT.\(stream).\(consumer)"
        self.pullSubject = pullSubject
        let sid = try connection.subscribe(inbox) { [weak self] message in self?.arrived(message, pullSubject) }
        let timeout = expires + .seconds(1)
        let watchdog = connection.eventLoop.scheduleRepeatedTask(initialDelay: timeout, delay: .milliseconds(500)) {
            [weak self] _ in
            guard let self else { return }
            let silent = self.lock.withLock { !self.stopped && !self.pullDue && NIODeadline.now() - self.lastWord > timeout }
            if silent { try? self.pull(pullSubject) }
        }
        lock.withLock {
            self.sid = sid
            self.watchdog = watchdog
        }
        try pull(pullSubject)
    }

    private func pull(_ subject: String) throws {
        lock.withLock {
            received = 0
            lastWord = NIODeadline.now()
        }
        let request = #"{"batch":\#(batch),"expires":\#(expires.nanoseconds)}"#
        try connection.publish(subject, payload: ByteBuffer(string: request), replyTo: inbox)
    }

    private func arrived(_ message: NATSMessage, _ pullSubject: String) {
        if let status = message.headers?.status, message.payload.readableBytes == 0 {
            // 404 no messages, 408 expired, 409 (limits, consumer deleted), 100 heartbeat.
            lock.withLock { lastWord = NIODeadline.now() }
            if status != 100 { try? pull(pullSubject) }
            return
        }
        let (filled, resume) = lock.withLock { () -> (Bool, (CheckedContinuation<[NATSMessage], Never>, [NATSMessage])?) in
            lastWord = NIODeadline.now()
            received += 1
            buffered.append(message)
            var resume: (CheckedContinuation<[NATSMessage], Never>, [NATSMessage])?
            if let waiting {
                resume = (waiting, buffered)
                self.waiting = nil
                buffered = []
            }
            guard received >= batch else { return (false, resume) }
            if buffered.count >= batch {
                pullDue = true
                return (false, resume)
            }
            return (true, resume)
        }
        if let (continuation, messages) = resume { continuation.resume(returning: messages) }
        if filled { try? pull(pullSubject) }
    }

    /// Every message that has arrived and was not taken yet, in JetStream's order; waits for
    /// one when none has. Empty once stopped. One caller at a time.
    public func nextBatch() async -> [NATSMessage] {
        await withCheckedContinuation { continuation in
            let (ready, pullNow) = lock.withLock { () -> ([NATSMessage]?, Bool) in
                let pullNow = pullDue && !stopped
                pullDue = false
                if !buffered.isEmpty || stopped {
                    defer { buffered = [] }
                    return (buffered, pullNow)
                }
                waiting = continuation
                return (nil, pullNow)
            }
            if pullNow { try? pull(pullSubject) }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Acknowledges `message` (with ack policy "all": it and every message before it).
    public func ack(_ message: NATSMessage) throws {
        guard let reply = message.replyTo else { return }
        try connection.publish(reply, payload: ByteBuffer(string: "+ACK"))
    }

    /// Stops pulling; a waiting `nextBatch` returns empty.
    public func stop() {
        let (waiting, sid) = lock.withLock { () -> (CheckedContinuation<[NATSMessage], Never>?, UInt64) in
            stopped = true
            watchdog?.cancel()
            defer { self.waiting = nil }
            return (self.waiting, self.sid)
        }
        waiting?.resume(returning: [])
        try? connection.unsubscribe(sid)
    }
}
