// How much more the connected sessions' queues can take: what a source of messages that can
// wait (the cluster's stream, which keeps them) asks before it hands the broker more, so that a
// burst it could have spread out does not pass a session's queue limit and drop messages.
import Foundation

/// Room in the connected sessions' queues (`Broker.routingRoom`).
public struct BrokerRoom: Sendable, Equatable {
    /// Messages (and payload bytes) one more routing may bring each connected session without
    /// any queue passing `queueMaxMessages` (`queueMaxBytes`): the least room of any of them.
    public var messages: Int
    public var bytes: Int
    /// The limits themselves: the room of empty queues.
    public var limitMessages: Int
    public var limitBytes: Int
}

extension Broker {
    /// The room in the queues of connected sessions, from the fullest one. Sessions that are
    /// not connected are not counted (their queue is their backlog, with its limits, as on one
    /// node), nor a queue that did not move for `stalledAfter` µs: a client that takes nothing
    /// more would otherwise hold back every other session; its queue drops its oldest messages
    /// as it does on one node. `slowerThanHalf`: nor a queue more than half full (messages or
    /// bytes), for a source that cannot wait longer for its slowest clients: the room is then at
    /// least half of each limit, and what it hands over passes no other queue's limit. Costs a
    /// look at each connected session with a queue, not at all sessions.
    public func routingRoom(stalledAfter: Int64 = 2_000_000, slowerThanHalf: Bool = false) -> BrokerRoom {
        locked {
            if !roomWatched {
                // From the first look on, connected sessions with a queue are kept track of
                // (`noteBacklog`); before it, nobody asked (a single node never does), and
                // keeping them would hold every such session for good.
                roomWatched = true
                for session in sessions.values where session.sink != nil && !session.queue.isEmpty { noteBacklog(session) }
            }
            let limits = currentLimits
            var room = BrokerRoom(
                messages: limits.queueMaxMessages, bytes: limits.queueMaxBytes,
                limitMessages: limits.queueMaxMessages, limitBytes: limits.queueMaxBytes)
            guard !backlogged.isEmpty else { return room }
            let now = clock()
            var gone: [ObjectIdentifier] = []
            for (key, session) in backlogged {
                guard session.sink != nil, !session.queue.isEmpty, !session.overflowed else {
                    gone.append(key)
                    continue
                }
                if session.dequeued != session.dequeuedSeen {
                    session.dequeuedSeen = session.dequeued
                    session.queueMovedAt = now
                } else if now - session.queueMovedAt > stalledAfter {
                    continue
                }
                if slowerThanHalf,
                    session.queue.count > limits.queueMaxMessages / 2 || session.queuedBytes > limits.queueMaxBytes / 2
                {
                    continue
                }
                room.messages = min(room.messages, max(0, limits.queueMaxMessages - session.queue.count))
                room.bytes = min(room.bytes, max(0, limits.queueMaxBytes - session.queuedBytes))
            }
            for key in gone { backlogged[key] = nil }
            return room
        }
    }

    /// Under the lock: `session` (connected) has something queued now.
    func noteBacklog(_ session: SessionState) {
        guard roomWatched else { return }
        let key = ObjectIdentifier(session)
        guard backlogged[key] == nil else { return }
        session.dequeuedSeen = session.dequeued
        session.queueMovedAt = clock()
        backlogged[key] = session
    }
}
