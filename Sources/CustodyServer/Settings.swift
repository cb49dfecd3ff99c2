import CustodyConfig
import Foundation
import LedgerCore

/// The flags given on the command line; nil where a flag was not given, so that a
/// configuration file's value stands unless a flag overrides it.
struct FlagValues {
    var dataDir: String?
    var maxSessionsPerClient: Int?
    var maxSessionExpiryHours: Int?
    var ledgerMapSizeMib: Int?
    var listen: [String] = []
    var connectTimeoutSeconds: Int?
    var logLevel: String?
    var passwordFile: String?
}

/// What `custody` runs with: the configuration file (if any), then the flags over it.
enum Settings {
    static func resolve(file: String?, flags: FlagValues) throws -> CustodyConfiguration {
        var configuration = CustodyConfiguration()
        if let file { configuration = try CustodyConfiguration.load(file: file) }
        if let value = flags.dataDir { configuration.dataDir = value }
        if let value = flags.maxSessionsPerClient {
            guard NamespacePolicy.sessionsPerClientRange.contains(value) else {
                throw SettingsError("--max-sessions-per-client must be between 1 and 100, got \(value)")
            }
            configuration.namespace.maximumClientSessionsPerAuthenticationName = value
        }
        if let value = flags.maxSessionExpiryHours {
            guard NamespacePolicy.expiryHoursRange.contains(value) else {
                throw SettingsError("--max-session-expiry-hours must be between 1 and 8, got \(value)")
            }
            configuration.namespace.maximumSessionExpiryInHours = value
        }
        if let value = flags.ledgerMapSizeMib {
            guard (1...(1 << 24)).contains(value) else {
                throw SettingsError("--ledger-map-size-mib must be between 1 and \(1 << 24), got \(value)")
            }
            configuration.ledgerMapSizeMiB = value
        }
        if !flags.listen.isEmpty {
            configuration.listeners = try flags.listen.map { text in
                guard let address = HostPort(parsing: text) else {
                    throw SettingsError("--listen '\(text)' is not HOST:PORT (IPv6 as [HOST]:PORT, port 0-65535)")
                }
                return ListenerConfiguration(kind: .mqtt, host: address.host, port: address.port)
            }
        }
        if let value = flags.connectTimeoutSeconds {
            guard (1...3600).contains(value) else {
                throw SettingsError("--connect-timeout-seconds must be between 1 and 3600, got \(value)")
            }
            configuration.connectTimeoutSeconds = value
        }
        if let value = flags.logLevel {
            guard let level = CustodyConfiguration.LogLevel(rawValue: value) else {
                throw SettingsError(
                    "--log-level '\(value)' is not one of \(CustodyConfiguration.LogLevel.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            configuration.logLevel = level
        }
        if let value = flags.passwordFile { configuration.passwordFile = value }
        return configuration
    }

    /// The one-paragraph summary `--check-config` prints for a valid file.
    static func summary(of configuration: CustodyConfiguration, file: String) -> String {
        let listeners = configuration.listeners.map { "\($0.kind.rawValue) \($0.address)" }.joined(separator: ", ")
        let namespace = configuration.namespace
        var lines = [
            "custody: \(file) is valid",
            "  dataDir \(configuration.dataDir)",
            "  listeners \(listeners)",
            "  namespace maximumClientSessionsPerAuthenticationName=\(namespace.maximumClientSessionsPerAuthenticationName) maximumSessionExpiryInHours=\(namespace.maximumSessionExpiryInHours) registeredClientsOnly=\(namespace.registeredClientsOnly)",
            "  clients \(configuration.clients.count) (\(configuration.clients.filter { $0.state == .disabled }.count) disabled)",
        ]
        if !namespace.alternativeAuthenticationNameSources.isEmpty {
            lines.append("  alternativeAuthenticationNameSources \(namespace.alternativeAuthenticationNameSources.map(\.rawValue).joined(separator: ", "))")
        }
        if let passwordFile = configuration.passwordFile { lines.append("  passwordFile \(passwordFile)") }
        return lines.joined(separator: "\n")
    }
}

struct SettingsError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension CustodyConfiguration {
    /// What this build of `custody` cannot honour yet: refused at startup rather than ignored.
    func validateForStart() throws {
        for listener in listeners where listener.kind != .mqtt {
            throw SettingsError("listener \(listener.kind.rawValue) \(listener.address): only mqtt listeners are supported by this build")
        }
        if passwordFile != nil {
            throw SettingsError("passwordFile: password checking is not wired into this build yet")
        }
        if namespace.registeredClientsOnly || !clients.isEmpty {
            throw SettingsError("clients/registeredClientsOnly: the client registry is not wired into this build yet")
        }
    }
}
