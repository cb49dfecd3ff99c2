import Broker
import CustodyModel
import CustodyAuthentication
import CustodyConfig
import CustodyTLS
import Foundation
import LedgerService
import Logging
import MQTTFront
import NIOCore
import Routing

// Client identity for `custody`: the listeners' transports (TLS from CustodyTLS), the
// identity authority (CustodyConfig's Authenticator) and its reload on SIGHUP.

/// The configuration decides identities for the front.
extension Authenticator: IdentityAuthority {}

extension CustodyConfiguration {
    /// The front's listeners, in the configuration's order; an mqtts listener's certificate,
    /// key and trusted CAs are read here, so a bad file stops startup with its name.
    func frontListeners() throws -> [FrontListener] {
        try listeners.filter { !$0.kind.isHTTPPublish }.map { listener in
            let address = HostPort(host: listener.host, port: listener.port)
            switch listener.kind {
            case .http, .https:
                preconditionFailure("HTTP publish listeners are not the MQTT front's")
            case .mqtt:
                return FrontListener(address: address, transport: .tcp)
            case .ws:
                return FrontListener(address: address, transport: .webSocket(path: "/mqtt"))
            case .mqtts:
                let setup: TLSListenerSetup
                do {
                    setup = try TLSListenerSetup(listener)
                } catch {
                    throw SettingsError("listener mqtts \(listener.address): \(error)")
                }
                return FrontListener(address: address, transport: .tls(setup.transport))
            }
        }
    }

    /// Whether CONNECTs are decided by the registry and password file: with a configuration
    /// file or a password file. Without either, every Username is believed (the development
    /// default) and no authority is installed.
    func needsAuthority(configFile: String?) -> Bool {
        configFile != nil || passwordFile != nil
    }

    /// The identity authority of this configuration: its clients, namespace identity settings
    /// and password file (read now).
    func authenticator() throws -> Authenticator {
        var passwords: PasswordFile?
        if let passwordFile { passwords = try PasswordFile.load(file: passwordFile) }
        return Authenticator(configuration: self, passwords: passwords)
    }

    /// The identity authority in force: the registry alone, or with the `authentication:`
    /// section's tokens (keys read now) and webhook.
    func identityAuthority(logger: Logger) async throws -> any IdentityAuthority {
        let registry = try authenticator()
        guard !authentication.isEmpty else { return registry }
        let tokens = authentication.jwt.isEmpty ? nil : try await TokenVerifier.load(authentication.jwt)
        let webhook = authentication.webhook.map { WebhookAuthenticator($0, logger: logger) }
        return SignIn(registry: registry, tokens: tokens, webhook: webhook)
    }

    /// What start-up says of sign-in without certificates; nil without any.
    func signInLine() -> String? {
        guard !authentication.isEmpty else { return nil }
        var parts: [String] = []
        if !authentication.jwt.isEmpty {
            parts.append("jwt_issuers=\(authentication.jwt.count) jwt_key_files=\(authentication.jwt.reduce(0) { $0 + $1.keys.count })")
        }
        if let webhook = authentication.webhook {
            parts.append("webhook=\(webhook.endpoint) webhook_timeout_ms=\(webhook.timeoutMilliseconds) webhook_cache_seconds=\(webhook.cacheSeconds)")
        }
        return "custody: sign-in order=certificate,jwt,password_file,webhook \(parts.joined(separator: " ")); SIGHUP reloads keys"
    }
}

extension TLSListenerSetup {
    /// What the front needs of this listener's TLS.
    var transport: TLSTransport {
        TLSTransport(
            addHandlers: { channel in try channel.pipeline.syncOperations.addHandler(makeHandler()) },
            peerIdentity: { channel in try peerIdentitySynchronously(of: channel) })
    }
}

/// Reloads the client registry (clients, namespace identity settings, password file), the
/// authorization rules (groups, topic spaces, bindings, attributes, acl file) and the limits
/// (`limits:`, connect timeout, keep-alive cap: for connections made after it) on SIGHUP. Listeners, data directory and session limits stay as they started; a file that
/// does not load leaves the registry in force as it was.
struct IdentityReload {
    let configFile: String?
    let flags: FlagValues
    let front: MQTTFront
    let broker: Broker
    /// The front's operations (metrics, event readers), kept as they started.
    let frontOperations: FrontOperations
    /// The ledger socket's claims take the reloaded registry and rules too (from the next claim).
    var ledgerSocket: LedgerSocketServer? = nil
    /// HTTP publish takes the reloaded registry, rules and rate too (from the next request).
    var httpGateway: HTTPPublishGateway? = nil
    /// Routes are replaced too (SIGHUP), and their enrichments read the reloaded attributes.
    var router: Router? = nil
    var routeAttributes: RouteAttributes? = nil
    let logger: Logger

    /// Reloads at each signal of `signals` (from `hangupSignals()`, set up early).
    func run(_ signals: AsyncStream<Void>) async {
        for await _ in signals { await reload() }
    }

    func reload() async {
        let identity = configFile != nil || flags.passwordFile != nil
        guard identity || flags.aclFile != nil || router != nil else {
            say("custody: SIGHUP: no configuration, password or acl file, nothing to reload")
            return
        }
        let authority: (any IdentityAuthority)?
        let access: AccessRules
        let configuration: CustodyConfiguration
        do {
            configuration = try Settings.resolve(file: configFile, flags: flags)
            authority = identity ? try await configuration.identityAuthority(logger: logger) : nil
            access = try configuration.accessRules()
        } catch {
            logger.error("registry reload failed; the registry in force is kept", metadata: ["error": "\(error)"])
            say("custody: SIGHUP: reload failed, registry kept: \(error)")
            return
        }
        var disconnected = 0
        if let authority { disconnected = await front.replaceAuthority(authority) }
        // After the identities: a connection that is gone loses nothing here.
        let revoked = await front.replaceAccess(access)
        if let ledgerSocket {
            if let authority { ledgerSocket.replaceAuthority(authority) }
            ledgerSocket.replaceAccess(access)
        }
        if let httpGateway {
            httpGateway.replace(HTTPPublishGateway.Rules(
                authority: authority, access: access, messagesPerSecond: configuration.limits.publishMessagesPerSecond))
        }
        routeAttributes?.replace(access)
        if let router {
            router.replace(configuration.routes)
            for line in configuration.routeLines(router) { say(line) }
        } else if !configuration.routes.isEmpty {
            say("custody: SIGHUP: warning: routes are read at start only when there were some; restart custody to start them")
        }
        // Limits: for the connections made from now on (the broker's: from now on).
        front.replaceLimits(configuration.frontConfiguration(listeners: [], operations: frontOperations))
        broker.replaceLimits(configuration.brokerLimits)
        logger.notice("registry reloaded", metadata: [
            "clients": "\(configuration.clients.count)", "disconnected": "\(disconnected)",
            "authorization": "\(access.mode)", "subscriptions_revoked": "\(revoked)",
        ])
        say("custody: SIGHUP: registry reloaded clients=\(configuration.clients.count) disconnected=\(disconnected) authorization=\(access.mode) subscriptions_revoked=\(revoked)")
        for warning in access.warnings { say("custody: warning: \(warning)") }
    }
}
