// The node's consumer: other nodes' QoS 1/2 messages from the stream into this node's broker.
//
// Flow control. A pull brings JetStream messages of up to `batchMessages` MQTT messages each,
// far more at once than a session's queue takes (`queueMaxMessages`, 1,000 by default) when the
// node has a backlog (after a pause, a lost NATS server, a burst). Handed over together they
// overflowed a subscriber's queue and dropped messages the publisher had been PUBACKed. So the
// consumer hands the broker at a time only as many MQTT messages (and payload bytes) as the
// fullest connected session's queue has room for (`Broker.routingRoom`), and waits while there
// is too little: the stream keeps the rest, unacknowledged. Two things bound the wait:
// - a session whose queue does not move for `roomStalledAfterMicroseconds` (a stalled client)
//   no longer counts: it loses its oldest queued messages as it would on one node, and the
//   node's other sessions go on;
// - messages held for a third of the ack wait (before JetStream would deliver them again) go on
//   past the queues that are more than half full: those clients are slower than the stream, and
//   their oldest are dropped as on one node; the others still pace the consumer.
// A slow client that keeps taking messages therefore slows this node's consumer to its pace
// (the node's other sessions with it); other nodes have consumers of their own.
//
// Interest. A JetStream message holds MQTT messages of one topic: one topic-tree walk says
// whether any session here subscribed to it. If none did, and none of its messages is retained
// (every node keeps retained messages), it is acknowledged without being decoded. The walk is
// made while the consumer holds the routing gate, as routing is, so a session taken on from
// another node (whose subscriptions arrive while the gate is held) is not passed over.
//
// Acknowledgements stay in order (ack policy "all"): after each hand-over is durable, the last
// JetStream message whose MQTT messages were all handed over is acknowledged.
import Broker
import Foundation
import MQTTCodec
import NATSClient

extension NATSClusterLink {
    /// One JetStream message in hand: its MQTT messages for this node once looked at (empty:
    /// skipped), and how many of them the broker has.
    private struct Held {
        let message: NATSMessage
        var publishes: [MQTTPublish]?
        var handed = 0
    }

    func consume() async {
        let holdLimit = Duration.seconds(max(1, settings.ackWaitSeconds / 3))
        while true {
            let messages = await pull.nextBatch()
            guard !messages.isEmpty else { return }
            if consumedThrough.load(ordering: .relaxed) == 0, let first = JetStreamMetadata(replyTo: messages[0].replyTo) {
                consumedThrough.store(first.timestamp / 1000, ordering: .relaxed)
            }
            let taken = ContinuousClock.now
            var held = messages.map { Held(message: $0) }
            var next = 0
            var warned = false
            while next < held.count {
                let overdue = ContinuousClock.now - taken > holdLimit
                if overdue, !warned {
                    warned = true
                    logger.warning("cluster: messages from NATS held for \(holdLimit) for want of room in a session's queue; they go on past queues more than half full (their oldest may be dropped)")
                }
                let room = broker.routingRoom(stalledAfter: settings.roomStalledAfterMicroseconds, slowerThanHalf: overdue)
                var allowed = (messages: room.messages, bytes: room.bytes)
                if allowed.messages < max(1, min(64, room.limitMessages / 8))
                    || allowed.bytes < max(1, min(64 << 10, room.limitBytes / 8))
                {
                    // Too little to be worth a hand-over: only what this node skips goes on.
                    allowed = (0, 0)
                }
                // A session being taken on from another node reads the stream meanwhile.
                await gate.enterRouting()
                let progressed: Bool
                do {
                    progressed = try await handOver(&held, from: &next, allowed: allowed, limitBytes: room.limitBytes)
                } catch {
                    gate.leaveRouting()
                    // Not acknowledged: JetStream delivers them again to this node's consumer
                    // (after its restart); later batches are not taken, since acknowledging one
                    // would acknowledge these too.
                    logger.error("cluster: messages from NATS could not be delivered here (\(error)); consumption stops")
                    pull.stop()
                    return
                }
                gate.leaveRouting()
                if !progressed { try? await Task.sleep(for: .milliseconds(1)) }
            }
        }
    }

    /// Hands the broker the next MQTT messages in `held` from `next`, at most `allowed` of
    /// them, then acknowledges the JetStream messages now wholly handed over (or skipped).
    /// Returns whether anything moved.
    private func handOver(
        _ held: inout [Held], from next: inout Int, allowed: (messages: Int, bytes: Int), limitBytes: Int
    ) async throws -> Bool {
        var chunk: [MQTTPublish] = []
        var bytes = 0
        var redelivered = 0
        var skipped = 0
        var done = next
        fill: while done < held.count {
            if held[done].publishes == nil {
                let (publishes, wanted) = look(at: held[done].message)
                held[done].publishes = publishes
                if !wanted { skipped += 1 }
                if let meta = JetStreamMetadata(replyTo: held[done].message.replyTo), meta.delivered > 1 {
                    redelivered += publishes.count
                }
            }
            let publishes = held[done].publishes ?? []
            while held[done].handed < publishes.count {
                let size = publishes[held[done].handed].payload.readableBytes
                let fits = bytes + size <= allowed.bytes || (chunk.isEmpty && allowed.bytes >= limitBytes)
                guard chunk.count < allowed.messages, fits else { break fill }
                chunk.append(publishes[held[done].handed])
                bytes += size
                held[done].handed += 1
            }
            done += 1
        }
        if !chunk.isEmpty { try await broker.publishFromCluster(chunk) }
        if done > next {
            try pull.ack(held[done - 1].message)
            if done < held.count, let oldest = JetStreamMetadata(replyTo: held[done].message.replyTo) {
                consumedThrough.store(oldest.timestamp / 1000, ordering: .relaxed)
            } else if let meta = JetStreamMetadata(replyTo: held[done - 1].message.replyTo) {
                consumedThrough.store(meta.pending == 0 ? 0 : meta.timestamp / 1000, ordering: .relaxed)
            }
        }
        let moved = done > next || !chunk.isEmpty
        next = done
        let handed = chunk.count
        if handed > 0 || redelivered > 0 || skipped > 0 {
            stats.withLock {
                $0.receivedReliable += handed
                $0.redelivered += redelivered
                $0.skippedBatches += skipped
            }
        }
        return moved
    }

    /// A JetStream message's MQTT messages for this node, and false when it is skipped
    /// undecoded: this node's own (it delivered them as they came), or of a topic no session
    /// here subscribed to, none of them retained.
    private func look(at message: NATSMessage) -> (publishes: [MQTTPublish], wanted: Bool) {
        guard message.headers?[Self.nodeHeader] != settings.nodeID else { return ([], true) }
        if let outline = ClusterMessageCodec.outline(message.payload), !outline.retained,
            !broker.wantsFromCluster(topic: outline.topic)
        {
            return ([], false)
        }
        guard let batch = ClusterMessageCodec.decodeBatch(message.payload) else {
            logger.warning("cluster: a message on \(message.subject) is not MQTT PUBLISH packets; skipped")
            return ([], true)
        }
        return (batch, true)
    }
}
