import CustodyModel
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import MQTTCodec
import NIOCore
import NIOSSL

/// What an accepted-for-parsing HTTP publish becomes: decided by whoever knows identities,
/// rules and the broker (the executable wires it).
public enum HTTPPublishOutcome: Sendable, Equatable {
    /// Accepted; for QoS 1, durable. 204.
    case accepted
    /// No credentials, or credentials that prove nothing. 401; `detail` for the log only.
    case unauthenticated(detail: String)
    /// Authenticated, not bound as Publisher for the topic. 403.
    case forbidden(detail: String)
    /// Refused by the broker for what the message is (a server topic, a retained message past
    /// the limits, a payload marked UTF-8 that is not). `status` 400, 403 or 413.
    case refused(status: Int, detail: String)
    /// Over the publisher's rate. 429 with `Retry-After` (whole seconds, at least 1).
    case rateLimited(retryAfterSeconds: Int)
    /// The store could not make it durable (or is closed). 503.
    case unavailable(detail: String)
}

/// Decides HTTP publishes: authentication, authorization, the rate limit and the broker.
public protocol HTTPPublishGate: Sendable {
    /// `certificate`: the client certificate an https listener that takes them was shown.
    func publish(
        _ publish: MQTTPublish, credentials: HTTPCredentials, certificate: CertificateIdentity?, remoteAddress: String
    ) async -> HTTPPublishOutcome
}

/// One HTTP publish listener: `POST /mqtt/messages?topic=T` (Event Grid's HTTP publish), served
/// by Hummingbird 2 over plain HTTP/1.1 or TLS. Run it as a `Service`
/// (`application`), or through `run()`.
public struct HTTPPublishServer: Sendable {
    public static let path = "/mqtt/messages"

    public let application: Application<RouterResponder<HTTPPublishContext>>

    /// What the client certificate of a connection says (nil: none shown), for an https
    /// listener that takes client certificates.
    public typealias ClientCertificate = @Sendable (any Channel) async -> CertificateIdentity?

    /// `maxMessageBytes`: the largest body (payload) taken; more is 413. `bound` hears the
    /// listening port once the listener is up (port 0 picks one). `acceptsAnyClientCertificate`:
    /// a certificate the client shows passes the handshake unchecked (self-signed ones, which
    /// `clientCertificate`'s reader and the registry judge by thumbprint).
    public init(
        host: String, port: Int, tls: TLSConfiguration?, acceptsAnyClientCertificate: Bool = false,
        clientCertificate: ClientCertificate? = nil, maxMessageBytes: Int, gate: any HTTPPublishGate, logger: Logger,
        bound: @escaping @Sendable (Int) async -> Void
    ) throws {
        let router = Router(context: HTTPPublishContext.self)
        router.post(RouterPath(Self.path)) { (request: Request, context: HTTPPublishContext) -> Response in
            let certificate = await clientCertificate?(context.channel)
            return await Self.answer(
                request, context, certificate: certificate, maxMessageBytes: maxMessageBytes, gate: gate, logger: logger)
        }
        let server: HTTPServerBuilder = try tls.map { tls in
            guard acceptsAnyClientCertificate else { return try .tls(.http1(), tlsConfiguration: tls) }
            return try .tls(.http1(), configuration: TLSChannelConfiguration(tlsConfiguration: tls) { _, promise in
                promise.succeed(.certificateVerified)
            })
        } ?? .http1()
        application = Application(
            router: router, server: server,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: "custody"),
            onServerRunning: { channel in await bound(channel.localAddress?.port ?? port) },
            logger: logger)
    }

    static func answer(
        _ request: Request, _ context: HTTPPublishContext, certificate: CertificateIdentity?, maxMessageBytes: Int,
        gate: any HTTPPublishGate, logger: Logger
    ) async -> Response {
        var request = request
        // Credentials first: an unauthenticated caller learns nothing about its request.
        guard let credentials = HTTPCredentials(authorization: request.headers[.authorization]) else {
            return Self.text(.unauthorized, "401 the Authorization header is neither Basic nor Bearer", authenticate: true)
        }
        if case .none = credentials, certificate == nil {
            return Self.text(.unauthorized, "401 credentials needed: Authorization Basic or Bearer, or a client certificate", authenticate: true)
        }
        if let length = request.headers[.contentLength].flatMap(Int.init), length > maxMessageBytes {
            return Self.text(.contentTooLarge, "413 the message is \(length) bytes, more than \(maxMessageBytes)")
        }
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: maxMessageBytes)
        } catch let error as HTTPError where error.status == .contentTooLarge {
            return Self.text(.contentTooLarge, "413 the message is more than \(maxMessageBytes) bytes")
        } catch {
            return Self.text(.badRequest, "400 body: \(error)")
        }
        let parsed: HTTPPublishRequest
        do {
            parsed = try HTTPPublishRequest(
                topic: request.uri.queryParameters.get("topic"),
                header: { name in HTTPField.Name(name).flatMap { request.headers[$0] } },
                body: body)
        } catch {
            return Self.text(.badRequest, "400 \(error)")
        }
        let remote = context.remoteAddress
        switch await gate.publish(parsed.publish, credentials: credentials, certificate: certificate, remoteAddress: remote) {
        case .accepted:
            return Response(status: .noContent)
        case .unauthenticated:
            return Self.text(.unauthorized, "401 the credentials were not accepted", authenticate: true)
        case .forbidden(let detail):
            return Self.text(.forbidden, "403 \(detail)")
        case .refused(let status, let detail):
            return Self.text(HTTPResponse.Status(code: status), "\(status) \(detail)")
        case .rateLimited(let seconds):
            var response = Self.text(.tooManyRequests, "429 over the publish rate; retry after \(seconds) s")
            response.headers[.retryAfter] = "\(max(1, seconds))"
            return response
        case .unavailable(let detail):
            logger.warning("HTTP publish not stored", metadata: ["topic": "\(parsed.publish.topicName)", "error": "\(detail)"])
            return Self.text(.serviceUnavailable, "503 the message could not be stored: \(detail)")
        }
    }

    static func text(_ status: HTTPResponse.Status, _ line: String, authenticate: Bool = false) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        if authenticate { headers[.wwwAuthenticate] = "Basic realm=\"custody\", Bearer" }
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: line + "\n")))
    }
}

/// Hummingbird's request context, with the peer's address (for the log and the webhook) and
/// its connection (for its client certificate).
public struct HTTPPublishContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: String
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = CoreRequestContextStorage(source: source)
        remoteAddress = source.channel.remoteAddress.map { "\($0)" } ?? ""
        channel = source.channel
    }
}
