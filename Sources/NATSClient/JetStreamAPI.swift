// The JetStream API subjects the client uses ($JS.API.STREAM.*, $JS.API.CONSUMER.*), as JSON
// requests over request/reply, and publishes that JetStream acknowledges.
import Foundation
import NIOCore
import NIOFoundationCompat

/// An error JetStream answered with: HTTP-like `code`, its own `err_code` (10059 stream not
/// found, 10014 consumer not found, 10058 stream name in use...), and the description.
public struct JetStreamError: Error, CustomStringConvertible, Sendable, Decodable {
    public var code: Int
    public var errCode: Int?
    public var detail: String

    enum CodingKeys: String, CodingKey { case code, errCode = "err_code", detail = "description" }

    public var description: String { "JetStream error \(code)/\(errCode ?? 0): \(detail)" }
    public var isNotFound: Bool { code == 404 }
}

/// What a stream is made with (the fields Custody uses; nil ones are JetStream's defaults).
public struct StreamConfig: Codable, Sendable, Equatable {
    public var name: String
    public var subjects: [String]
    public var retention: String = "limits"
    public var storage: String = "file"
    public var numReplicas: Int = 1
    /// Nanoseconds; 0 keeps messages until other limits drop them.
    public var maxAge: Int64 = 0
    public var maxMsgsPerSubject: Int64?
    public var maxBytes: Int64?
    public var discard: String = "old"
    /// Nanoseconds in which a repeated Nats-Msg-Id is answered as a duplicate, not stored.
    public var duplicateWindow: Int64?

    public init(name: String, subjects: [String]) {
        self.name = name
        self.subjects = subjects
    }

    enum CodingKeys: String, CodingKey {
        case name, subjects, retention, storage, discard
        case numReplicas = "num_replicas", maxAge = "max_age", maxMsgsPerSubject = "max_msgs_per_subject"
        case maxBytes = "max_bytes", duplicateWindow = "duplicate_window"
    }
}

public struct StreamState: Decodable, Sendable {
    public var messages: UInt64
    public var firstSeq: UInt64
    public var lastSeq: UInt64
    public var consumerCount: Int?
    enum CodingKeys: String, CodingKey { case messages, firstSeq = "first_seq", lastSeq = "last_seq", consumerCount = "consumer_count" }
}

public struct StreamInfo: Decodable, Sendable {
    public var config: StreamConfig
    public var state: StreamState
}

/// A consumer's settings (pull consumers: no deliver_subject).
public struct ConsumerConfig: Codable, Sendable, Equatable {
    public var durableName: String?
    /// "all", "new", "last", "last_per_subject", "by_start_sequence", "by_start_time".
    public var deliverPolicy: String = "all"
    public var optStartSeq: UInt64?
    /// RFC 3339 time, for "by_start_time".
    public var optStartTime: String?
    /// "explicit", "all" (an ack acknowledges every earlier message too), "none".
    public var ackPolicy: String = "explicit"
    /// Nanoseconds before an unacknowledged message is delivered again.
    public var ackWait: Int64?
    public var filterSubject: String?
    public var maxAckPending: Int?
    public var maxWaiting: Int?
    /// Nanoseconds without a pull after which JetStream deletes a non-durable consumer.
    public var inactiveThreshold: Int64?
    public var replayPolicy: String = "instant"
    public var numReplicas: Int?

    public init(durableName: String?) { self.durableName = durableName }

    enum CodingKeys: String, CodingKey {
        case durableName = "durable_name", deliverPolicy = "deliver_policy", optStartSeq = "opt_start_seq"
        case optStartTime = "opt_start_time"
        case ackPolicy = "ack_policy", ackWait = "ack_wait", filterSubject = "filter_subject"
        case maxAckPending = "max_ack_pending", maxWaiting = "max_waiting", inactiveThreshold = "inactive_threshold"
        case replayPolicy = "replay_policy", numReplicas = "num_replicas"
    }
}

public struct ConsumerInfo: Decodable, Sendable {
    public var name: String
    public var config: ConsumerConfig
    public var numPending: UInt64?
    public var numAckPending: UInt64?
    enum CodingKeys: String, CodingKey { case name, config, numPending = "num_pending", numAckPending = "num_ack_pending" }
}

/// JetStream's answer to a publish: stored in `stream` at `sequence`, or a duplicate of it.
public struct PublishAck: Decodable, Sendable {
    public var stream: String
    public var sequence: UInt64
    public var duplicate: Bool?

    public init(stream: String, sequence: UInt64, duplicate: Bool?) {
        self.stream = stream
        self.sequence = sequence
        self.duplicate = duplicate
    }
    enum CodingKeys: String, CodingKey { case stream, sequence = "seq", duplicate }
}

/// JetStream through one connection.
public struct JetStream: Sendable {
    public let connection: NATSConnection
    public var apiPrefix = "$JS.API"

    public init(_ connection: NATSConnection) { self.connection = connection }

    private struct Envelope<Body: Decodable>: Decodable {
        var error: JetStreamError?
        var body: Body?
        init(from decoder: Decoder) throws {
            let keys = try decoder.container(keyedBy: ErrorKey.self)
            error = try keys.decodeIfPresent(JetStreamError.self, forKey: .error)
            body = error == nil ? try Body(from: decoder) : nil
        }
        enum ErrorKey: String, CodingKey { case error }
    }

    private struct Empty: Decodable {}

    /// One API request; JetStream's error answer throws `JetStreamError`.
    func call<Answer: Decodable>(_ subject: String, _ body: (some Encodable)?, as: Answer.Type) async throws -> Answer {
        let payload = try body.map { ByteBuffer(data: try JSONEncoder().encode($0)) } ?? ByteBuffer()
        let reply = try await connection.request("\(apiPrefix).\(subject)", payload: payload)
        let envelope = try JSONDecoder().decode(Envelope<Answer>.self, from: Data(reply.payload.readableBytesView))
        if let error = envelope.error { throw error }
        return envelope.body!
    }

    public func streamInfo(_ name: String) async throws -> StreamInfo? {
        do {
            return try await call("STREAM.INFO.\(name)", nil as String?, as: StreamInfo.self)
        } catch let error as JetStreamError where error.isNotFound {
            return nil
        }
    }

    public func createStream(_ config: StreamConfig) async throws -> StreamInfo {
        try await call("STREAM.CREATE.\(config.name)", config, as: StreamInfo.self)
    }

    /// The stream as configured: made when missing; an existing one is left as it is.
    public func ensureStream(_ config: StreamConfig) async throws -> StreamInfo {
        if let info = try await streamInfo(config.name) { return info }
        do {
            return try await createStream(config)
        } catch let error as JetStreamError where error.errCode == 10058 {
            // Another node made it at the same moment.
            guard let info = try await streamInfo(config.name) else { throw error }
            return info
        }
    }

    public func deleteStream(_ name: String) async throws {
        _ = try await call("STREAM.DELETE.\(name)", nil as String?, as: Empty.self)
    }

    private struct CreateConsumer: Encodable {
        var stream_name: String
        var config: ConsumerConfig
    }

    /// A durable consumer (kept across restarts of its clients) or, without a name, an ephemeral one.
    public func createConsumer(stream: String, _ config: ConsumerConfig) async throws -> ConsumerInfo {
        let request = CreateConsumer(stream_name: stream, config: config)
        if let durable = config.durableName {
            return try await call("CONSUMER.DURABLE.CREATE.\(stream).\(durable)", request, as: ConsumerInfo.self)
        }
        return try await call("CONSUMER.CREATE.\(stream)", request, as: ConsumerInfo.self)
    }

    public func consumerInfo(stream: String, name: String) async throws -> ConsumerInfo? {
        do {
            return try await call("CONSUMER.INFO.\(stream).\(name)", nil as String?, as: ConsumerInfo.self)
        } catch let error as JetStreamError where error.isNotFound {
            return nil
        }
    }

    /// Deletes a consumer; false when there was none.
    @discardableResult
    public func deleteConsumer(stream: String, name: String) async throws -> Bool {
        do {
            _ = try await call("CONSUMER.DELETE.\(stream).\(name)", nil as String?, as: Empty.self)
            return true
        } catch let error as JetStreamError where error.isNotFound {
            return false
        }
    }

    private struct Purge: Encodable {
        var filter: String?
        var seq: UInt64?
    }

    private struct Purged: Decodable { var purged: UInt64? }

    /// Removes the stream's messages on `subject` (nil: every subject) below sequence
    /// `before` (nil: all of them); returns how many went.
    @discardableResult
    public func purge(stream: String, subject: String?, before: UInt64? = nil) async throws -> UInt64 {
        try await call("STREAM.PURGE.\(stream)", Purge(filter: subject, seq: before), as: Purged.self).purged ?? 0
    }

    /// A message as the stream keeps it.
    public struct StoredMessage: Decodable, Sendable {
        public var subject: String
        public var sequence: UInt64
        /// The payload (JetStream sends it base64).
        public var data: Data
        enum CodingKeys: String, CodingKey { case subject, sequence = "seq", data }

        public init(from decoder: Decoder) throws {
            let keys = try decoder.container(keyedBy: CodingKeys.self)
            subject = try keys.decode(String.self, forKey: .subject)
            sequence = try keys.decode(UInt64.self, forKey: .sequence)
            data = try keys.decodeIfPresent(String.self, forKey: .data).flatMap { Data(base64Encoded: $0) } ?? Data()
        }
    }

    private struct GetLast: Encodable { var last_by_subj: String }
    private struct Got: Decodable { var message: StoredMessage }

    /// The stream's last message on `subject`; nil when it has none.
    public func lastMessage(stream: String, subject: String) async throws -> StoredMessage? {
        do {
            return try await call("STREAM.MSG.GET.\(stream)", GetLast(last_by_subj: subject), as: Got.self).message
        } catch let error as JetStreamError where error.isNotFound {
            return nil
        }
    }

    /// Publishes and waits until JetStream has stored the message. With `messageID` the publish
    /// is sent again after a timeout or a lost connection until `deadline`: JetStream answers a
    /// repeat inside its duplicate window as a duplicate instead of storing it twice.
    public func publish(
        _ subject: String, payload: ByteBuffer, headers: NATSHeaders = NATSHeaders(), messageID: String? = nil,
        deadline: TimeAmount = .seconds(30)
    ) async throws -> PublishAck {
        try await publishFuture(subject, payload: payload, headers: headers, messageID: messageID, deadline: deadline).get()
    }

    /// `publish`, sent before it returns (publishes keep the caller's order), acknowledged by
    /// the future.
    public func publishFuture(
        _ subject: String, payload: ByteBuffer, headers: NATSHeaders = NATSHeaders(), messageID: String? = nil,
        deadline: TimeAmount = .seconds(30)
    ) -> EventLoopFuture<PublishAck> {
        var headers = headers
        if let messageID { headers.add("Nats-Msg-Id", messageID) }
        return attempt(subject, payload, headers, retry: messageID != nil, until: .now() + deadline)
    }

    /// A publish ack read without Foundation's JSON decoder on the hot path: JetStream writes
    /// `{"stream":"S","seq":N}` (with `"duplicate":true` for a repeat); anything else
    /// (an error) is decoded in full.
    static func publishAck(_ payload: ByteBuffer) throws -> PublishAck {
        let text = String(buffer: payload)
        if !text.contains("\"error\""), let stream = field(text, "\"stream\":\""),
            let seq = field(text, "\"seq\":")?.drop(while: { $0 == " " }), let sequence = UInt64(seq.prefix(while: \.isNumber))
        {
            let name = String(stream.prefix(while: { $0 != "\"" }))
            let duplicate = field(text, "\"duplicate\"")?.drop(while: { $0 == ":" || $0 == " " }).hasPrefix("true") == true
            return PublishAck(stream: name, sequence: sequence, duplicate: duplicate ? true : nil)
        }
        let envelope = try JSONDecoder().decode(Envelope<PublishAck>.self, from: Data(payload.readableBytesView))
        if let error = envelope.error { throw error }
        return envelope.body!
    }

    private static func field(_ text: String, _ key: String) -> Substring? {
        text.range(of: key).map { text[$0.upperBound...] }
    }

    private func attempt(_ subject: String, _ payload: ByteBuffer, _ headers: NATSHeaders, retry: Bool, until: NIODeadline)
        -> EventLoopFuture<PublishAck>
    {
        let connection = self.connection
        return connection.requestFuture(subject, payload: payload, headers: headers).flatMapThrowing { reply in
            try Self.publishAck(reply.payload)
        }.flatMapError { error in
            // Again only when a repeat cannot store the message twice: a timeout, a lost
            // server, nobody answering yet, JetStream without a leader (503).
            let again: Bool
            switch error {
            case NATSError.timeout, NATSError.noResponders, NATSError.connectionLost: again = true
            case let error as JetStreamError: again = error.code == 503
            default: again = false
            }
            let loop = connection.eventLoop
            guard retry, again, NIODeadline.now() < until else { return loop.makeFailedFuture(error) }
            return loop.scheduleTask(in: .milliseconds(100)) {}.futureResult.flatMap {
                self.attempt(subject, payload, headers, retry: retry, until: until)
            }
        }
    }
}
