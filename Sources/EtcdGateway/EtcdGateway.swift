import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import Synchronization

/// Why a call to etcd gave no answer.
public enum EtcdGatewayError: Error, Sendable, CustomStringConvertible {
    /// No endpoint answered in time (down, unreachable, or without quorum).
    case unreachable(String)
    /// An endpoint answered with an HTTP error: the gateway's status and message.
    case refused(status: Int, message: String)
    /// The answer was not the JSON expected.
    case malformed(String)

    public var description: String {
        switch self {
        case .unreachable(let detail): "etcd unreachable: \(detail)"
        case .refused(let status, let message): "etcd answered \(status): \(message)"
        case .malformed(let detail): "etcd's answer was not understood: \(detail)"
        }
    }
}

/// A client of etcd's v3 JSON gateway (`/v3/kv/txn`, `/v3/kv/range`, `/v3/lease/...`,
/// `/v3/watch`) over pooled HTTP/1.1 connections (async-http-client): many calls run at
/// once, each on a connection of the pool, none waits for another. A call goes to the
/// endpoint that answered last and moves on to the next one when it gets no answer.
public final class EtcdGateway: Sendable {
    public let endpoints: [String]
    /// How long one endpoint may take to answer a call.
    public let requestTimeout: TimeAmount
    private let client: HTTPClient
    /// Watches hold their connection open and may be silent for long: no read timeout.
    private let watchClient: HTTPClient
    private let preferred = Mutex(0)
    private let encoder = JSONEncoder()

    /// `endpoints`: base URLs (`http://127.0.0.1:2379`). `connections`: the pool's connections
    /// per endpoint (HTTP/1.1 carries one call at a time on each).
    public init(endpoints: [String], requestTimeout: Double = 3, connections: Int = 64) {
        precondition(!endpoints.isEmpty)
        self.endpoints = endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.requestTimeout = .milliseconds(Int64(requestTimeout * 1000))
        var configuration = HTTPClient.Configuration()
        configuration.httpVersion = .http1Only
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: connections)
        configuration.timeout = .init(connect: .milliseconds(Int64(min(requestTimeout, 1) * 1000)))
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        var watching = configuration
        watching.connectionPool = .init(idleTimeout: .seconds(3600), concurrentHTTP1ConnectionsPerHostSoftLimit: 16)
        watchClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: watching)
    }

    public func shutdown() async {
        try? await client.shutdown()
        try? await watchClient.shutdown()
    }

    // MARK: Key-value

    /// One transaction: `compare`, then `success` or `failure`, atomically at one revision.
    /// `successAnswers`: false when the caller reads nothing from a successful Txn's
    /// operations (its writes): their answers are then not decoded (`responses` is empty).
    public func txn(_ txn: EtcdTxn, successAnswers: Bool = true) async throws(EtcdGatewayError) -> EtcdTxnResult {
        try await post("/v3/kv/txn", txn.jsonBody(), skipSuccessAnswers: !successAnswers)
    }

    /// The keys from `key` (to `rangeEnd`, exclusive, when given) and the store's revision.
    public func range(_ key: String, rangeEnd: String? = nil) async throws(EtcdGatewayError) -> (
        keyValues: [EtcdKeyValue], revision: Int64
    ) {
        let result = try await txn(EtcdTxn(success: [.range(key: key, rangeEnd: rangeEnd)]))
        return (result.responses.first?.keyValues ?? [], result.revision)
    }

    /// Puts one key (on `lease` when not 0); answers the revision of the write.
    @discardableResult
    public func put(_ key: String, _ value: Data, lease: Int64 = 0) async throws(EtcdGatewayError) -> Int64 {
        try await txn(EtcdTxn(success: [.put(key: key, value: value, lease: lease)])).revision
    }

    /// Deletes one key, or every key to `rangeEnd`; answers the revision after it.
    @discardableResult
    public func delete(_ key: String, rangeEnd: String? = nil) async throws(EtcdGatewayError) -> Int64 {
        try await txn(EtcdTxn(success: [.delete(key: key, rangeEnd: rangeEnd)])).revision
    }

    // MARK: Leases

    struct GrantRequest: Encodable {
        var TTL: EtcdInt
    }

    struct LeaseRequest: Encodable {
        var ID: EtcdInt
    }

    /// A new lease of `ttl` seconds.
    public func grantLease(ttl: Int64) async throws(EtcdGatewayError) -> EtcdLease {
        let body: LeaseBody = try await call("/v3/lease/grant", GrantRequest(TTL: EtcdInt(ttl)))
        if let error = body.error, !error.isEmpty { throw .refused(status: 200, message: error) }
        guard let id = body.ID?.value, id != 0 else { throw .malformed("lease grant without an ID") }
        return EtcdLease(id: id, ttl: body.TTL?.value ?? 0)
    }

    /// Renews a lease once; answers its new time to live, 0 when it has lapsed (etcd then
    /// leaves TTL out).
    public func keepAlive(_ lease: Int64) async throws(EtcdGatewayError) -> Int64 {
        let body: KeepAliveBody = try await call("/v3/lease/keepalive", LeaseRequest(ID: EtcdInt(lease)))
        return body.result?.TTL?.value ?? 0
    }

    /// Ends a lease now: every key on it is deleted.
    public func revokeLease(_ lease: Int64) async throws(EtcdGatewayError) {
        let _: GatewayErrorBody = try await call("/v3/lease/revoke", LeaseRequest(ID: EtcdInt(lease)))
    }

    // MARK: Calls

    /// POSTs `body` as JSON to `path` on the preferred endpoint, then the others in turn.
    func call<Body: Encodable, Answer: Decodable>(_ path: String, _ body: Body) async throws(EtcdGatewayError) -> Answer {
        let bytes: Data
        do { bytes = try encoder.encode(body) } catch { throw .malformed("\(error)") }
        return try await post(path, ByteBuffer(data: bytes))
    }

    /// POSTs `body` to `path` on the preferred endpoint, then the others in turn; decodes
    /// the answer.
    func post<Answer: Decodable>(_ path: String, _ body: ByteBuffer, skipSuccessAnswers: Bool = false) async throws(EtcdGatewayError) -> Answer {
        let first = preferred.withLock { $0 }
        var failures: [String] = []
        for step in 0..<endpoints.count {
            let index = (first + step) % endpoints.count
            var request = HTTPClientRequest(url: endpoints[index] + path)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(body)
            let answer: ByteBuffer
            let status: Int
            do {
                let response = try await client.execute(request, timeout: requestTimeout)
                status = Int(response.status.code)
                answer = try await response.body.collect(upTo: 16 << 20)
            } catch {
                failures.append("\(endpoints[index]): \(error)")
                continue
            }
            guard status == 200 else {
                let detail = (try? JSONDecoder().decode(GatewayErrorBody.self, from: answer))
                let message = detail?.message ?? detail?.error ?? String(buffer: answer)
                // An endpoint without quorum or leader answers 503/504-like errors: try another.
                if status >= 500, step + 1 < endpoints.count {
                    failures.append("\(endpoints[index]): \(status) \(message)")
                    continue
                }
                throw .refused(status: status, message: message)
            }
            if index != first { preferred.withLock { $0 = index } }
            do {
                let decoder = JSONDecoder()
                if skipSuccessAnswers { decoder.userInfo[EtcdTxnResult.skipSuccessAnswers] = true }
                return try decoder.decode(Answer.self, from: answer)
            } catch {
                throw .malformed("\(path): \(error): \(String(buffer: answer).prefix(200))")
            }
        }
        throw .unreachable(failures.joined(separator: "; "))
    }

    // MARK: Watch

    /// What a watch reports: the revision it has reached and the changes up to it.
    public struct WatchUpdate: Sendable {
        /// The watch is in place; changes from `startRevision` on will follow.
        public var created: Bool
        public var revision: Int64
        public var events: [EtcdWatchEvent]
    }

    struct WatchRequest: Encodable {
        struct Create: Encodable {
            var key: Data
            var rangeEnd: Data?
            var startRevision: EtcdInt?
            var prevKV: Bool
            enum CodingKeys: String, CodingKey {
                case key
                case rangeEnd = "range_end"
                case startRevision = "start_revision"
                case prevKV = "prev_kv"
            }
        }
        var createRequest: Create
        enum CodingKeys: String, CodingKey { case createRequest = "create_request" }
    }

    /// Watches `key` (to `rangeEnd`) from `startRevision` (0: from now), handing each update
    /// to `onUpdate` in order, until the task is cancelled (returns) or the stream breaks
    /// (throws: watch again from the last revision seen + 1). The gateway streams one JSON
    /// object a line.
    public func watch(
        _ key: String, rangeEnd: String? = nil, startRevision: Int64 = 0, previousValues: Bool = true,
        onUpdate: @Sendable (WatchUpdate) async -> Void
    ) async throws(EtcdGatewayError) {
        let body = WatchRequest(createRequest: .init(
            key: Data(key.utf8), rangeEnd: rangeEnd.map { Data($0.utf8) },
            startRevision: startRevision > 0 ? EtcdInt(startRevision) : nil, prevKV: previousValues))
        let bytes: Data
        do { bytes = try encoder.encode(body) } catch { throw .malformed("\(error)") }
        let endpoint = endpoints[preferred.withLock { $0 }]
        var request = HTTPClientRequest(url: endpoint + "/v3/watch")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(data: bytes))
        do {
            let response = try await watchClient.execute(request, timeout: .hours(24 * 365))
            guard response.status == .ok else {
                throw EtcdGatewayError.refused(status: Int(response.status.code), message: "watch")
            }
            var pending = ByteBuffer()
            for try await chunk in response.body {
                var chunk = chunk
                pending.writeBuffer(&chunk)
                while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                    let length = newline - pending.readerIndex
                    let line = pending.readSlice(length: length)!
                    pending.moveReaderIndex(forwardBy: 1)
                    try await handle(line, onUpdate)
                }
                if pending.readableBytes > 0, let update = try? decodeWatchLine(pending) {
                    // A last object without its newline.
                    pending.clear()
                    await onUpdate(update)
                }
                pending.discardReadBytes()
            }
            if Task.isCancelled { return }
            throw EtcdGatewayError.unreachable("the watch stream from \(endpoint) ended")
        } catch let error as EtcdGatewayError {
            throw error
        } catch {
            if Task.isCancelled { return }
            throw .unreachable("watch on \(endpoint): \(error)")
        }
    }

    private func handle(_ line: ByteBuffer, _ onUpdate: @Sendable (WatchUpdate) async -> Void) async throws {
        guard line.readableBytes > 0 else { return }
        await onUpdate(try decodeWatchLine(line))
    }

    private func decodeWatchLine(_ line: ByteBuffer) throws -> WatchUpdate {
        let decoded: WatchLine
        do { decoded = try JSONDecoder().decode(WatchLine.self, from: line) } catch {
            throw EtcdGatewayError.malformed("watch: \(error)")
        }
        if let error = decoded.error {
            throw EtcdGatewayError.refused(status: error.code ?? 0, message: error.message ?? error.error ?? "watch error")
        }
        guard let result = decoded.result else { throw EtcdGatewayError.malformed("watch line without result") }
        if result.canceled == true {
            let compacted = result.compactRevision.map { " (compacted to \($0.value))" } ?? ""
            throw EtcdGatewayError.refused(status: 0, message: "watch canceled: \(result.cancelReason ?? "")\(compacted)")
        }
        let events = (result.events ?? []).compactMap { event -> EtcdWatchEvent? in
            guard let kv = event.kv else { return nil }
            return EtcdWatchEvent(kind: event.type == "DELETE" ? .delete : .put, keyValue: kv, previous: event.prevKV)
        }
        return WatchUpdate(created: result.created == true, revision: result.header?.revision?.value ?? 0, events: events)
    }
}
