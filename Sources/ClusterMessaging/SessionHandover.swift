// A persistent session resuming on a node other than the one that held it: its subscriptions
// come from its record (`SessionStateStore`), and its queue from the message stream itself:
// every stored message matching its subscriptions since the record's `since` (less a margin
// for the clocks of nodes and NATS servers), read through one ephemeral consumer per
// subject, merged by stream sequence (each message once, however many filters match it),
// and queued for the session in that order before its CONNACK. The node's own consumer is
// held meanwhile, so that nothing it takes falls between the two: what the session's
// consumers read up to the stream's last sequence (read after the hold), the node's consumer
// routes to the session from where it was held (a message in both is queued twice, the copy
// after the first; QoS 1 allows that).
import Broker
import Foundation
import LedgerCore
import Logging
import NATSClient
import Synchronization

/// Holds the node's consumer between batches while a session is taken on.
final class ConsumeGate: Sendable {
    private let state = Mutex((routing: false, holds: 0))

    /// Before the consumer routes a batch: waits while a hand-over holds it.
    func enterRouting() async {
        while !state.withLock({ state in
            guard state.holds == 0 else { return false }
            state.routing = true
            return true
        }) {
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    func leaveRouting() {
        state.withLock { $0.routing = false }
    }

    /// Holds the consumer once its batch in progress is routed.
    func hold() async {
        state.withLock { $0.holds += 1 }
        while state.withLock({ $0.routing }) { try? await Task.sleep(for: .milliseconds(1)) }
    }

    func release() {
        state.withLock { $0.holds -= 1 }
    }
}

public enum SessionHandoverError: Error, CustomStringConvertible {
    case incomplete(session: String, missing: UInt64)

    public var description: String {
        switch self {
        case .incomplete(let session, let missing):
            "the queue of session \(session) could not be read from JetStream (\(missing) messages missing)"
        }
    }
}

struct SessionHandover {
    let jetStream: JetStream
    let settings: ClusterMessagingSettings
    let broker: Broker
    let gate: ConsumeGate
    let logger: Logger
    /// The node's link: its own messages' ids, and whether JetStream has them yet.
    let own: NATSClusterLink

    enum Start {
        case time(microseconds: Int64)
        case sequence(UInt64)
    }

    /// Brings `record`'s session here; returns the number of messages queued for it.
    func takeOn(_ name: SessionName, _ record: SessionStateRecord) async throws -> Int {
        await gate.hold()
        defer { gate.release() }
        guard let info = try await jetStream.streamInfo(settings.streamName) else { return 0 }
        let bound = info.state.lastSeq
        let start = record.since - settings.handoverMarginSeconds * 1_000_000
        var subjects = Set<String>()
        for subscription in record.subscriptions where TopicRules.splitShare(subscription.filter) == nil {
            subjects.formUnion(NATSClusterLink.reliableMapping.subjects(filter: subscription.filter))
        }
        var found: [UInt64: [ClusterQueuedMessage]] = [:]
        for subject in subjects.sorted() {
            try await read(subject, from: .time(microseconds: start), through: bound, session: name, into: &found) { _ in true }
        }
        let messages = found.sorted { $0.key < $1.key }.flatMap(\.value)
        var queued = try await broker.restoreSession(name, subscriptions: record.subscriptions, messages: messages)
        // This node's own clients' messages are routed here as they come, not by its consumer:
        // one routed before the session's subscriptions were in place but stored in JetStream
        // after `bound` is in neither. Those come now, once JetStream has answered for them
        // (queued behind what came meanwhile; later ones of this node are here already).
        let lastOwn = await own.flushedMessageNumber()
        await own.ownMessagesAnswered()
        let prefix = own.ownMessageIDPrefix
        var late: [UInt64: [ClusterQueuedMessage]] = [:]
        if let after = try await jetStream.streamInfo(settings.streamName)?.state.lastSeq, after > bound {
            for subject in subjects.sorted() {
                try await read(subject, from: .sequence(bound + 1), through: after, session: name, into: &late) { message in
                    guard let id = message.headers?["Nats-Msg-Id"], id.hasPrefix(prefix), let number = UInt64(id.dropFirst(prefix.count))
                    else { return false }
                    return number <= lastOwn
                }
            }
            if !late.isEmpty {
                queued += try await broker.queueForSession(name, late.sorted { $0.key < $1.key }.flatMap(\.value))
            }
        }
        logger.info("cluster: session taken on from another node", metadata: [
            "session_name": "\(name)", "from_node": "\(record.node)", "subscriptions": "\(record.subscriptions.count)",
            "messages_read": "\(messages.count)", "own_late": "\(late.values.reduce(0) { $0 + $1.count })", "queued": "\(queued)", "through_sequence": "\(bound)",
        ])
        return queued
    }

    /// The messages on `subject` stored from `start` up to sequence `bound` that `keep` keeps.
    private func read(
        _ subject: String, from start: Start, through bound: UInt64, session: SessionName,
        into found: inout [UInt64: [ClusterQueuedMessage]], keep: (NATSMessage) -> Bool
    ) async throws {
        var config = ConsumerConfig(durableName: nil)
        switch start {
        case .time(let microseconds):
            config.deliverPolicy = "by_start_time"
            config.optStartTime = Self.rfc3339(microseconds: max(microseconds, 0))
        case .sequence(let first):
            config.deliverPolicy = "by_start_sequence"
            config.optStartSeq = first
        }
        config.ackPolicy = "none"
        config.filterSubject = subject
        config.inactiveThreshold = 30_000_000_000
        let consumer = try await jetStream.createConsumer(stream: settings.streamName, config)
        defer {
            let jetStream = self.jetStream
            let stream = settings.streamName
            Task { try? await jetStream.deleteConsumer(stream: stream, name: consumer.name) }
        }
        var remaining = consumer.numPending ?? 0
        guard remaining > 0 else { return }
        let pull = try PullConsumer(jetStream, stream: settings.streamName, consumer: consumer.name, batch: 1000, expires: .seconds(2))
        // A message that went meanwhile (its age passed) would leave the pull waiting.
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(60))
            pull.stop()
        }
        defer {
            watchdog.cancel()
            pull.stop()
        }
        reading: while remaining > 0 {
            let messages = await pull.nextBatch()
            if messages.isEmpty { break }
            for message in messages {
                remaining -= 1
                guard let meta = JetStreamMetadata(replyTo: message.replyTo) else { continue }
                if meta.streamSequence > bound {
                    remaining = 0
                    break reading
                }
                // A batch (codec version 2) is its messages, in order, under its one sequence.
                guard keep(message), let batch = ClusterMessageCodec.decodeBatch(message.payload) else { continue }
                found[meta.streamSequence] = batch.map { ClusterQueuedMessage(publish: $0, storedAt: meta.timestamp / 1000) }
                if meta.pending == 0 {
                    remaining = 0
                    break reading
                }
            }
        }
        if remaining > 0 { throw SessionHandoverError.incomplete(session: session.value, missing: remaining) }
    }

    static func rfc3339(microseconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date(timeIntervalSince1970: Double(microseconds) / 1_000_000))
    }
}
