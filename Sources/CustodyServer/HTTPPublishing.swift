import Authorization
import Broker
import CustodyConfig
import CustodyModel
import CustodyTLS
import Foundation
import HTTPPublish
import LedgerCore
import Logging
import MQTTCodec
import NIOSSL
import Synchronization

// HTTP publish for `custody` (issue 21): who the caller is (the identity authority the MQTT
// front asks: password file, tokens, webhook), what it may publish (the same access rules),
// its rate, and the broker.

/// Decides HTTP publishes with the MQTT front's identity authority and access rules; SIGHUP
/// replaces them (`replace`).
final class HTTPPublishGateway: HTTPPublishGate {
    struct Rules: Sendable {
        /// nil: no configuration or password file; a Basic user name is believed (the
        /// development default, as a CONNECT's Username is), a token proves nothing.
        var authority: (any IdentityAuthority)?
        var access: any AccessControl
        /// PUBLISH messages a second one authentication name may send over HTTP (0: no limit),
        /// `limits.publishMessagesPerSecond` as for one MQTT connection.
        var messagesPerSecond: Int
    }

    /// The session name a bearer token's CONNECT would carry: the token names the client.
    static let tokenSessionName = "http-publish"

    private let rules: Mutex<Rules>
    /// Per authentication name key: the second (since the epoch) and the messages counted in it.
    private let windows = Mutex<[String: (second: Int64, count: Int)]>([:])
    let broker: Broker
    let logger: Logger

    init(rules: Rules, broker: Broker, logger: Logger) {
        self.rules = Mutex(rules)
        self.broker = broker
        self.logger = logger
    }

    func replace(_ rules: Rules) {
        self.rules.withLock { $0 = rules }
        windows.withLock { $0 = [:] }
    }

    func publish(
        _ publish: MQTTPublish, credentials: HTTPCredentials, certificate: CertificateIdentity?, remoteAddress: String
    ) async -> HTTPPublishOutcome {
        let rules = self.rules.withLock { $0 }
        let identity: IdentityDecision
        switch await authenticate(credentials, certificate, rules.authority, remoteAddress: remoteAddress) {
        case .success(let decision): identity = decision
        case .failure(let refusal):
            logger.notice("HTTP publish unauthenticated", metadata: [
                "remote": "\(remoteAddress)", "reason": "\(refusal.detail)",
            ])
            return .unauthenticated(detail: refusal.detail)
        }
        let name = identity.authenticationName
        let permissions = rules.access.permissions(
            authenticationName: name.value, sessionName: name.value, attributes: identity.attributes)
        let decision = permissions.mayPublish(publish.topicName)
        guard decision.isAllowed else {
            logger.notice("HTTP publish denied", metadata: [
                "client": "\(name)", "topic": "\(publish.topicName)", "reason": "\(decision.reason)",
            ])
            return .forbidden(detail: "'\(name)' may not publish to '\(publish.topicName)' (\(decision.reason))")
        }
        if rules.messagesPerSecond > 0, !admit(name.key, rate: rules.messagesPerSecond) {
            return .rateLimited(retryAfterSeconds: 1)
        }
        do {
            let publisher = PublisherFacts(
                authenticationName: name.value, sessionName: name.value,
                signInAttributes: identity.attributes.mapValues(\.text))
            switch try await broker.publishWithoutSession(publish, publisher: publisher) {
            case .accepted:
                return .accepted
            case .serverTopic:
                return .forbidden(detail: "'\(publish.topicName)' is one of the server's own topics")
            case .payloadFormatInvalid:
                return .refused(status: 400, detail: "body: marked UTF-8 (content is JSON or text) and not UTF-8")
            case .retainedRefused(let limit):
                return .refused(status: 413, detail: "mqtt-retain: the retained message is past \(limit.rawValue)")
            }
        } catch {
            if error.reasonCode == .topicNameInvalid { return .refused(status: 400, detail: "topic: \(error)") }
            return .unavailable(detail: "\(error)")
        }
    }

    private struct Refusal: Error {
        var detail: String
    }

    /// As a CONNECT with these credentials would be: Basic is Username and password (the user
    /// name also the session name), Bearer a token (OAUTH2-JWT), and a client certificate is
    /// the CONNECT's certificate, deciding as it does for MQTT. With a certificate alone, its
    /// subject's common name stands where a ClientID would (the authentication name of last
    /// resort, after the namespace's alternative sources of a CA-issued certificate).
    private func authenticate(
        _ credentials: HTTPCredentials, _ certificate: CertificateIdentity?, _ authority: (any IdentityAuthority)?,
        remoteAddress: String
    ) async -> Result<IdentityDecision, Refusal> {
        let connect: ConnectCredentials
        switch credentials {
        case .none:
            guard let certificate else { return .failure(Refusal(detail: "no credentials")) }
            connect = ConnectCredentials(
                username: nil, password: nil, sessionName: certificate.subjectCommonName ?? Self.tokenSessionName,
                certificate: certificate, remoteAddress: remoteAddress, listener: "https")
        case .basic(let username, let password):
            guard AuthenticationName(unchecked: username).isValid else {
                return .failure(Refusal(detail: "the user name is not 1-128 characters"))
            }
            connect = ConnectCredentials(
                username: username, password: Array(password.utf8), sessionName: username, certificate: certificate,
                remoteAddress: remoteAddress, listener: certificate == nil ? "http" : "https")
        case .bearer(let token):
            connect = ConnectCredentials(
                username: nil, password: nil, sessionName: Self.tokenSessionName, certificate: certificate,
                authenticationMethod: "OAUTH2-JWT", authenticationData: Array(token.utf8),
                remoteAddress: remoteAddress, listener: certificate == nil ? "http" : "https")
        }
        guard let authority else {
            guard let username = connect.username else {
                return .failure(Refusal(detail: "no user name, and no client registry, password file or token issuers configured"))
            }
            return .success(IdentityDecision(
                authenticationName: AuthenticationName(unchecked: username), verdict: .authenticated,
                detail: "believed (no password file)"))
        }
        let decision = authority.asksElsewhere(connect)
            ? await authority.decideElsewhere(connect) : authority.decide(connect)
        guard decision.verdict == .authenticated else { return .failure(Refusal(detail: decision.detail)) }
        return .success(decision)
    }

    /// One more message from `key` in this second, if it is under `rate`.
    private func admit(_ key: String, rate: Int) -> Bool {
        let second = Int64(Date().timeIntervalSince1970)
        return windows.withLock { windows in
            var window = windows[key] ?? (second, 0)
            if window.second != second { window = (second, 0) }
            guard window.count < rate else { return false }
            window.count += 1
            windows[key] = window
            if windows.count > 10_000 { windows = windows.filter { $0.value.second == second } }
            return true
        }
    }
}

extension CustodyConfiguration {
    /// The HTTP publish listeners' servers (TLS files read now: a bad one stops start-up).
    func httpPublishServers(gateway: HTTPPublishGateway, logger: Logger) throws -> [HTTPPublishServer] {
        try listeners.filter(\.kind.isHTTPPublish).map { listener in
            let setup = listener.kind == .https ? try Self.httpsSetup(listener) : nil
            let kind = listener.kind.rawValue
            let host = listener.host
            return try HTTPPublishServer(
                host: listener.host, port: listener.port, tls: setup?.configuration,
                acceptsAnyClientCertificate: setup?.acceptsAnyClientCertificate ?? false,
                clientCertificate: setup.flatMap(Self.clientCertificate), maxMessageBytes: limits.maxPacketBytes,
                gate: gateway, logger: logger,
                bound: { port in say("custody: listening \(kind) \(HostPort(host: host, port: port)) POST \(HTTPPublishServer.path)") })
        }
    }

    /// An https listener's TLS (its files read now): the mqtts listener settings, client
    /// certificates included (`clientCertificates`, `trustedCertificates`).
    static func httpsSetup(_ listener: ListenerConfiguration) throws -> TLSListenerSetup {
        do {
            return try TLSListenerSetup(listener)
        } catch {
            throw SettingsError("listener https \(listener.address): \(error)")
        }
    }

    /// What a connection's client certificate says, on a listener that takes them.
    static func clientCertificate(_ setup: TLSListenerSetup) -> HTTPPublishServer.ClientCertificate? {
        guard setup.clientCertificates != .none else { return nil }
        return { channel in try? await setup.peerIdentity(of: channel).get() }
    }
}
