import AsyncHTTPClient
import Authorization
import CoreMetrics
import Crypto
import CustodyConfig
import CustodyModel
import LedgerCore
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Synchronization

/// What the webhook said of one CONNECT.
public enum WebhookOutcome: Sendable, Equatable {
    case allow(name: AuthenticationName, attributes: [String: AttributeValue], expiration: Double?)
    case deny(reason: String)
    /// Timed out, 5xx, or an answer that is not the JSON it should be: never an allow.
    case failed(String)
}

/// Asks the configured endpoint (async-http-client, Event Grid's request and answer
/// fields) and keeps allow and deny answers for `cacheSeconds`, by a hash of the credentials.
public final class WebhookAuthenticator: Sendable {
    let settings: AuthenticationConfiguration.Webhook
    let client: HTTPClient
    private let cache: Mutex<[SHA256Digest: (outcome: WebhookOutcome, until: Double)]>
    private let logger: Logger
    private let factory: (any MetricsFactory)?

    /// Most answers kept: past this the cache is emptied (a flood of new credentials must
    /// not grow it without bound).
    static let cacheLimit = 100_000

    public init(
        _ settings: AuthenticationConfiguration.Webhook, client: HTTPClient = .shared, logger: Logger,
        metrics factory: (any MetricsFactory)? = nil
    ) {
        self.settings = settings
        self.client = client
        self.logger = logger
        self.factory = factory
        cache = Mutex([:])
    }

    /// The request body: Event Grid's fields, plus the listener and the remote address.
    struct Request: Encodable {
        var clientId: String
        var userName: String?
        var password: String?
        var authenticationMethod: String?
        var authenticationData: String?
        var clientCertificate: String?
        var clientCertificateChain: [String]?
        var listener: String
        var remoteAddress: String
    }

    /// The answer: Event Grid's fields.
    struct Answer: Decodable {
        var decision: String
        var clientAuthenticationName: String?
        var attributes: [String: ClaimValue]?
        var expiration: String?
        var errorReason: String?
    }

    public func ask(_ credentials: ConnectCredentials, now: Double = Date().timeIntervalSince1970) async -> WebhookOutcome {
        let key = Self.cacheKey(credentials)
        if settings.cacheSeconds > 0, let cached = cached(key, now: now) {
            count(outcome: "cached")
            return cached
        }
        let outcome = await request(credentials, now: now)
        switch outcome {
        case .allow: count(outcome: "allow")
        case .deny: count(outcome: "deny")
        case .failed(let why):
            count(outcome: "failure")
            logger.warning("authentication webhook failed", metadata: [
                "endpoint": "\(settings.endpoint)", "session_name": "\(credentials.sessionName)",
                "remote_address": "\(credentials.remoteAddress)", "error": "\(why)",
            ])
        }
        var cacheable = settings.cacheSeconds > 0
        if case .failed = outcome { cacheable = false }
        if cacheable {
            var until = now + Double(settings.cacheSeconds)
            if case .allow(_, _, .some(let expiration)) = outcome { until = min(until, expiration) }
            cache.withLock { table in
                if table.count >= Self.cacheLimit { table.removeAll() }
                table[key] = (outcome, until)
            }
        }
        return outcome
    }

    private func cached(_ key: SHA256Digest, now: Double) -> WebhookOutcome? {
        cache.withLock { table in
            guard let entry = table[key] else { return nil }
            guard entry.until > now else {
                table[key] = nil
                return nil
            }
            return entry.outcome
        }
    }

    /// `custody_auth_webhook_requests_total{outcome="allow|deny|failure|cached"}`.
    private func count(outcome: String) {
        let label = "custody_auth_webhook_requests_total"
        if let factory {
            CoreMetrics.Counter(label: label, dimensions: [("outcome", outcome)], factory: factory).increment()
        } else {
            CoreMetrics.Counter(label: label, dimensions: [("outcome", outcome)]).increment()
        }
    }

    /// What identifies the credentials: every field sent, hashed (the cache holds no secret).
    static func cacheKey(_ credentials: ConnectCredentials) -> SHA256Digest {
        var hasher = SHA256()
        func field(_ bytes: [UInt8]?) {
            var length = UInt64(bytes?.count ?? 0).bigEndian
            withUnsafeBytes(of: &length) { hasher.update(bufferPointer: $0) }
            hasher.update(data: [bytes == nil ? 0 : 1] + (bytes ?? []))
        }
        field(Array(credentials.sessionName.utf8))
        field(credentials.username.map { Array($0.utf8) })
        field(credentials.password)
        field(credentials.authenticationMethod.map { Array($0.utf8) })
        field(credentials.authenticationData)
        field(credentials.certificate.map { Array($0.thumbprint.utf8) })
        field(Array(credentials.listener.utf8))
        return hasher.finalize()
    }

    private func request(_ credentials: ConnectCredentials, now: Double) async -> WebhookOutcome {
        let body = Request(
            clientId: credentials.sessionName, userName: credentials.username,
            password: credentials.password.map { Data($0).base64EncodedString() },
            authenticationMethod: credentials.authenticationMethod,
            authenticationData: credentials.authenticationData.map { Data($0).base64EncodedString() },
            clientCertificate: credentials.certificateChainPEM.first,
            clientCertificateChain: credentials.certificateChainPEM.isEmpty ? nil : credentials.certificateChainPEM,
            listener: credentials.listener, remoteAddress: credentials.remoteAddress)
        var request = HTTPClientRequest(url: settings.endpoint)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        for (name, value) in settings.headers { request.headers.add(name: name, value: value) }
        let timeout = TimeAmount.milliseconds(Int64(settings.timeoutMilliseconds))
        let data: ByteBuffer
        do {
            request.body = .bytes(ByteBuffer(data: try JSONEncoder().encode(body)))
            let response = try await client.execute(request, timeout: timeout)
            guard response.status == .ok else {
                return .failed("HTTP \(response.status.code)")
            }
            data = try await response.body.collect(upTo: 64 << 10)
        } catch {
            return .failed("\(error)")
        }
        let answer: Answer
        do {
            answer = try JSONDecoder().decode(Answer.self, from: data)
        } catch {
            return .failed("the answer is not the JSON expected: \(error)")
        }
        switch answer.decision.lowercased() {
        case "deny":
            return .deny(reason: answer.errorReason ?? "denied by the webhook")
        case "allow":
            let text = answer.clientAuthenticationName ?? credentials.username ?? credentials.sessionName
            guard let name = try? AuthenticationName(validating: text) else {
                return .failed("clientAuthenticationName '\(text.prefix(140))' is not a valid authentication name")
            }
            var expiration: Double?
            if let text = answer.expiration {
                guard let date = Self.rfc3339(text) else { return .failed("expiration '\(text)' is not an RFC 3339 time") }
                guard date.timeIntervalSince1970 > now else { return .deny(reason: "the webhook's expiration has passed") }
                expiration = date.timeIntervalSince1970
            }
            var attributes: [String: AttributeValue] = [:]
            for (key, value) in answer.attributes ?? [:] {
                if let attribute = value.attribute { attributes[key] = attribute }
            }
            return .allow(name: name, attributes: attributes, expiration: expiration)
        default:
            return .failed("decision '\(answer.decision.prefix(40))' is neither allow nor deny")
        }
    }

    static func rfc3339(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }
}
