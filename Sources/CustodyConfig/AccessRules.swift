import Authorization
import Foundation
import LedgerCore

/// The access control of one configuration: its bindings (or acl file) compiled once, and
/// the registry's client attributes, which queries and templates read. Made at start-up and
/// at each reload; the front asks it once per CONNECT.
public struct AccessRules: AccessControl {
    private enum Rules: Sendable {
        case open
        case policy(AuthorizationPolicy)
        case acl(MosquittoACL)
    }

    private let rules: Rules
    /// By `AuthenticationName.key` (names compare case-insensitively).
    private let attributes: [String: [String: AttributeValue]]
    /// Lines of the acl file that apply to no one (Mosquitto ignores them too), for the log.
    public let warnings: [String]

    /// Reads the acl file, if any. Bindings were checked when the configuration was read.
    public init(configuration: CustodyConfiguration) throws(ConfigurationError) {
        let authorization = configuration.authorization
        var attributes: [String: [String: AttributeValue]] = [:]
        for client in configuration.clients where !client.attributes.isEmpty {
            attributes[client.authenticationName.key] = client.attributes.mapValues(\.value)
        }
        self.attributes = attributes
        var warnings: [String] = []
        switch authorization.effectiveMode {
        case .open:
            rules = .open
        case .enforced:
            if let path = authorization.aclFile {
                let text: String
                do {
                    text = try String(contentsOfFile: path, encoding: .utf8)
                } catch {
                    throw ConfigurationError(
                        file: path, line: nil, key: nil, message: "cannot read the acl file: \(error.localizedDescription)")
                }
                do {
                    let acl = try MosquittoACL(parsing: text)
                    warnings = acl.warnings.map { "\(path): \($0)" }
                    rules = .acl(acl)
                } catch {
                    throw ConfigurationError(file: path, line: error.line, key: nil, message: error.reason)
                }
            } else {
                do {
                    rules = .policy(try AuthorizationPolicy(
                        mode: .enforced, clientGroups: authorization.clientGroups, topicSpaces: authorization.topicSpaces,
                        permissionBindings: authorization.permissionBindings))
                } catch {
                    throw ConfigurationError(file: "configuration", line: nil, key: nil, message: "\(error)")
                }
            }
        }
        self.warnings = warnings
    }

    public var mode: AuthorizationMode {
        if case .open = rules { return .open }
        return .enforced
    }

    /// The registry's attributes of the client, overridden key by key by `signIn`'s (a
    /// token's claims, the webhook's answer).
    public func facts(
        authenticationName: String, sessionName: String, signIn: [String: AttributeValue] = [:]
    ) -> ClientFacts {
        var merged = attributes[AuthenticationName(unchecked: authenticationName).key] ?? [:]
        if !signIn.isEmpty { merged.merge(signIn) { _, new in new } }
        return ClientFacts(authenticationName: authenticationName, sessionName: sessionName, attributes: merged)
    }

    public func permissions(authenticationName: String, sessionName: String) -> ClientPermissions {
        permissions(authenticationName: authenticationName, sessionName: sessionName, attributes: [:])
    }

    public func permissions(
        authenticationName: String, sessionName: String, attributes signIn: [String: AttributeValue]
    ) -> ClientPermissions {
        switch rules {
        case .open: .open
        case .policy(let policy):
            policy.permissions(for: facts(authenticationName: authenticationName, sessionName: sessionName, signIn: signIn))
        case .acl(let acl):
            acl.permissions(for: facts(authenticationName: authenticationName, sessionName: sessionName, signIn: signIn))
        }
    }
}
