import NIOCore

/// How fast one connection may publish (`limits.publishMessagesPerSecond`,
/// `limits.publishBytesPerSecond`; Event Grid: 100 messages and 1 MB a second). Throttling,
/// as EMQX's limiter does it: a client over its budget is not refused and loses nothing, its
/// socket is simply not read until the budget has refilled, so TCP slows it down.
///
/// Two token buckets, each with a burst of one second's worth. A PUBLISH is charged when it
/// is read, into debt if need be (a read may hold many): reads stay paused until every debt is
/// paid. Bytes are those of the topic and the payload. Pure (the caller gives the time); kept
/// by the connection only when a rate is set.
struct PublishThrottle: Sendable {
    private var messages: TokenBucket?
    private var bytes: TokenBucket?

    /// nil when neither rate is set (0: off).
    init?(messagesPerSecond: Int, bytesPerSecond: Int, now: NIODeadline) {
        guard messagesPerSecond > 0 || bytesPerSecond > 0 else { return nil }
        if messagesPerSecond > 0 {
            messages = TokenBucket(rate: Double(messagesPerSecond), capacity: Double(messagesPerSecond), now: now)
        }
        if bytesPerSecond > 0 {
            bytes = TokenBucket(rate: Double(bytesPerSecond), capacity: Double(bytesPerSecond), now: now)
        }
    }

    /// A PUBLISH of `size` bytes was read.
    mutating func charge(bytes size: Int, now: NIODeadline) {
        messages?.charge(1, now: now)
        bytes?.charge(Double(size), now: now)
    }

    /// How long reads must wait at `now`, and which budget is the reason; nil: read on.
    func wait(at now: NIODeadline) -> (TimeAmount, FrontLimit)? {
        let messageWait = messages?.timeUntilPaid(at: now) ?? .zero
        let byteWait = bytes?.timeUntilPaid(at: now) ?? .zero
        guard messageWait > .zero || byteWait > .zero else { return nil }
        return messageWait >= byteWait
            ? (messageWait, .publishMessagesPerSecond) : (byteWait, .publishBytesPerSecond)
    }
}
