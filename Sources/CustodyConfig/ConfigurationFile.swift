import CustodyModel
import Foundation
import LedgerCore
import Yams

/// A problem in a configuration file: which file, which line, which key, what is wrong.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    /// The dotted path of the key, e.g. `namespace.maximumSessionExpiryInHours` or `clients[2].state`.
    public var key: String?
    public var message: String

    public init(file: String, line: Int?, key: String?, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        var place = file
        if let line { place += ":\(line)" }
        if let key { return "\(place): \(key): \(message)" }
        return "\(place): \(message)"
    }
}

extension CustodyConfiguration {
    /// Reads and checks a YAML configuration file. Every key is known or refused, every
    /// value checked; relative paths in it are taken from the file's own directory.
    public static func load(file path: String) throws(ConfigurationError) -> CustodyConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(file: path, line: nil, key: nil, message: "cannot read the file: \(error.localizedDescription)")
        }
        let base = (path as NSString).deletingLastPathComponent
        return try parse(yaml: text, file: path, baseDirectory: base.isEmpty ? "." : base)
    }

    /// Parses the YAML text of a configuration file named `file` (for messages).
    public static func parse(yaml text: String, file: String, baseDirectory: String = ".") throws(ConfigurationError) -> CustodyConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigurationError(file: file, line: yamlLine(error), key: nil, message: "not valid YAML: \(yamlProblem(error))")
        } catch {
            throw ConfigurationError(file: file, line: nil, key: nil, message: "not valid YAML: \(error)")
        }
        var reader = ConfigurationReader(file: file, baseDirectory: baseDirectory)
        guard let root else { return CustodyConfiguration() }  // an empty file: every default
        return try reader.configuration(root)
    }
}

private func yamlLine(_ error: YamlError) -> Int? {
    switch error {
    case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
        return mark.line
    default:
        return nil
    }
}

private func yamlProblem(_ error: YamlError) -> String {
    switch error {
    case .scanner(_, let problem, _, _), .parser(_, let problem, _, _), .composer(_, let problem, _, _):
        return problem
    default:
        return "\(error)"
    }
}

/// Walks the YAML tree with the key path and line at hand, so that every message names both.
struct ConfigurationReader {
    let file: String
    let baseDirectory: String

    func fail(_ node: Node?, _ key: String?, _ message: String) -> ConfigurationError {
        ConfigurationError(file: file, line: node?.mark?.line, key: key, message: message)
    }

    /// The pairs of a mapping, refusing keys not in `known` and keys given twice.
    func mapping(_ node: Node, _ path: String?, known: [String]) throws(ConfigurationError) -> [String: (key: Node, value: Node)] {
        guard let mapping = node.mapping else {
            throw fail(node, path, "expected a mapping of keys to values")
        }
        var result: [String: (key: Node, value: Node)] = [:]
        for (key, value) in mapping {
            guard let name = key.scalar?.string else { throw fail(key, path, "keys must be plain strings") }
            let full = path.map { "\($0).\(name)" } ?? name
            guard known.contains(name) else {
                let hint = known.first { $0.lowercased() == name.lowercased() }.map { " (did you mean \($0)?)" } ?? ""
                throw fail(key, full, "unknown key\(hint); known here: \(known.joined(separator: ", "))")
            }
            guard result[name] == nil else { throw fail(key, full, "given twice") }
            result[name] = (key, value)
        }
        return result
    }

    func string(_ node: Node, _ path: String) throws(ConfigurationError) -> String {
        guard let scalar = node.scalar else { throw fail(node, path, "expected a single value") }
        return scalar.string
    }

    func nonEmptyString(_ node: Node, _ path: String) throws(ConfigurationError) -> String {
        let text = try string(node, path)
        guard !text.isEmpty else { throw fail(node, path, "must not be empty") }
        return text
    }

    func int(_ node: Node, _ path: String, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let scalar = node.scalar, let value = Int(scalar.string) else {
            throw fail(node, path, "expected a whole number from \(range.lowerBound) to \(range.upperBound), got '\(node.scalar?.string ?? "a collection")'")
        }
        guard range.contains(value) else {
            throw fail(node, path, "must be from \(range.lowerBound) to \(range.upperBound), got \(value)")
        }
        return value
    }

    func bool(_ node: Node, _ path: String) throws(ConfigurationError) -> Bool {
        switch node.scalar?.string.lowercased() {
        case "true"?, "yes"?, "on"?: return true
        case "false"?, "no"?, "off"?: return false
        default: throw fail(node, path, "expected true or false, got '\(node.scalar?.string ?? "a collection")'")
        }
    }

    func choice<E: RawRepresentable & CaseIterable>(_ node: Node, _ path: String, _: E.Type) throws(ConfigurationError) -> E
    where E.RawValue == String {
        let text = try string(node, path)
        if let value = E(rawValue: text) { return value }
        // Case-insensitive match, as Event Grid's API accepts; the message names the spelling.
        if let value = E.allCases.first(where: { $0.rawValue.lowercased() == text.lowercased() }) { return value }
        throw fail(node, path, "'\(text)' is not one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
    }

    func sequence(_ node: Node, _ path: String) throws(ConfigurationError) -> [Node] {
        guard let sequence = node.sequence else { throw fail(node, path, "expected a list") }
        return Array(sequence)
    }

    func path(_ node: Node, _ key: String) throws(ConfigurationError) -> String {
        let text = try nonEmptyString(node, key)
        let base = URL(fileURLWithPath: baseDirectory, isDirectory: true)
        return URL(fileURLWithPath: text, relativeTo: base).standardizedFileURL.path
    }

    mutating func configuration(_ root: Node) throws(ConfigurationError) -> CustodyConfiguration {
        let keys = try mapping(root, nil, known: [
            "dataDir", "listeners", "namespace", "clients", "passwordFile", "ledgerMapSizeMiB",
            "connectTimeoutSeconds", "logLevel", "logFormat", "metrics", "metricsAllowRemote", "eventSubscribers",
            "maxKeepAliveSeconds", "limits", "ledger", "ledgerSocket", "authentication", "routes", "cluster",
        ] + Self.authorizationKeys)
        var config = CustodyConfiguration()
        if let (_, value) = keys["dataDir"] { config.dataDir = try path(value, "dataDir") }
        if let (_, value) = keys["listeners"] {
            let items = try sequence(value, "listeners")
            guard !items.isEmpty || keys["ledgerSocket"] != nil else {
                throw fail(value, "listeners", "at least one listener is needed (none only with ledgerSocket)")
            }
            config.listeners = []
            for (index, item) in items.enumerated() {
                config.listeners.append(try listener(item, "listeners[\(index)]"))
            }
            var seen: [String: Int] = [:]
            for (index, listener) in config.listeners.enumerated() where listener.port != 0 {
                let address = listener.address.description
                if let first = seen[address] {
                    throw fail(items[index], "listeners[\(index)].address", "\(address) is already used by listeners[\(first)]")
                }
                seen[address] = index
            }
        }
        if let (_, value) = keys["namespace"] { config.namespace = try namespace(value) }
        if let (_, value) = keys["clients"] {
            var byKey: [String: Int] = [:]
            for (index, item) in try sequence(value, "clients").enumerated() {
                let record = try client(item, "clients[\(index)]")
                if let first = byKey[record.authenticationName.key] {
                    throw fail(item, "clients[\(index)].authenticationName",
                               "'\(record.authenticationName.value)' is already clients[\(first)] (names compare case-insensitively)")
                }
                byKey[record.authenticationName.key] = index
                config.clients.append(record)
            }
        }
        if let (_, value) = keys["passwordFile"] { config.passwordFile = try path(value, "passwordFile") }
        if let (_, value) = keys["ledgerSocket"] { config.ledgerSocket = try path(value, "ledgerSocket") }
        if let (_, value) = keys["ledgerMapSizeMiB"] {
            config.ledgerMapSizeMiB = try int(value, "ledgerMapSizeMiB", range: 1...(1 << 24))
        }
        if let (_, value) = keys["connectTimeoutSeconds"] {
            config.connectTimeoutSeconds = try int(value, "connectTimeoutSeconds", range: 1...3600)
        }
        if let (_, value) = keys["maxKeepAliveSeconds"] {
            config.maxKeepAliveSeconds = try int(value, "maxKeepAliveSeconds", range: 1...65_535)
        }
        if let (_, value) = keys["limits"] { config.limits = try limits(value) }
        if let (_, value) = keys["ledger"] { config.ledger = try ledger(value) }
        if let (_, value) = keys["cluster"] { config.cluster = try cluster(value) }
        if let (_, value) = keys["logLevel"] { config.logLevel = try choice(value, "logLevel", CustodyConfiguration.LogLevel.self) }
        if let (_, value) = keys["logFormat"] { config.logFormat = try choice(value, "logFormat", CustodyConfiguration.LogFormat.self) }
        if let (_, value) = keys["metrics"] {
            let text = try nonEmptyString(value, "metrics")
            guard let address = HostPort(parsing: text, defaultPort: 9090) else {
                throw fail(value, "metrics", "'\(text)' is not HOST:PORT")
            }
            config.metrics = address
        }
        if let (_, value) = keys["metricsAllowRemote"] { config.metricsAllowRemote = try bool(value, "metricsAllowRemote") }
        if let (_, value) = keys["eventSubscribers"] {
            for (index, item) in try sequence(value, "eventSubscribers").enumerated() {
                let at = "eventSubscribers[\(index)]"
                let text = try string(item, at)
                do {
                    config.eventSubscribers.append(try AuthenticationName(validating: text))
                } catch {
                    throw fail(item, at, "'\(text)' is not a valid authentication name (1-128 characters of UTF-8): \(error)")
                }
            }
        }
        config.authorization = try authorization(keys)
        if let (_, value) = keys["authentication"] { config.authentication = try authentication(value) }
        if let (_, value) = keys["routes"] { config.routes = try routes(value, environment: ProcessInfo.processInfo.environment) }
        if config.namespace.registeredClientsOnly && config.clients.isEmpty {
            throw fail(keys["namespace"]?.value, "namespace.registeredClientsOnly",
                       "is true but no clients are registered: nobody could connect")
        }
        return config
    }

    /// `ledger: { checkpointEvery: N, retention: { days: D, maxLiveBytes: 8GiB } }`; `retention: off` archives nothing.
    func ledger(_ node: Node) throws(ConfigurationError) -> LedgerConfiguration {
        let keys = try mapping(node, "ledger", known: ["checkpointEvery", "retention"])
        var ledger = LedgerConfiguration()
        if let (_, value) = keys["checkpointEvery"] {
            ledger.checkpointEvery = try int(value, "ledger.checkpointEvery", range: LedgerConfiguration.checkpointEveryRange)
        }
        if let (_, value) = keys["retention"] {
            if let text = value.scalar?.string, ["off", "false", "none"].contains(text) {
                ledger.retentionDays = nil
                ledger.maxLiveBytes = nil
                return ledger
            }
            let retention = try mapping(value, "ledger.retention", known: ["days", "maxLiveBytes"])
            ledger.retentionDays = nil
            ledger.maxLiveBytes = nil
            if let (_, days) = retention["days"] {
                ledger.retentionDays = try int(days, "ledger.retention.days", range: LedgerConfiguration.retentionDaysRange)
            }
            if let (_, bytes) = retention["maxLiveBytes"] {
                let text = try string(bytes, "ledger.retention.maxLiveBytes")
                guard let parsed = LedgerConfiguration.parseBytes(text), parsed >= 1 << 20 else {
                    throw fail(bytes, "ledger.retention.maxLiveBytes", "'\(text)' is not a size of at least 1MiB (such as 8GiB or 536870912)")
                }
                ledger.maxLiveBytes = parsed
            }
        }
        return ledger
    }

    func listener(_ node: Node, _ at: String) throws(ConfigurationError) -> ListenerConfiguration {
        let keys = try mapping(node, at, known: [
            "protocol", "address", "certificate", "privateKey", "clientCertificates", "trustedCertificates",
        ])
        guard let (_, kindNode) = keys["protocol"] else { throw fail(node, "\(at).protocol", "missing (mqtt, mqtts, ws, http or https)") }
        let kind = try choice(kindNode, "\(at).protocol", ListenerConfiguration.Kind.self)
        guard let (_, addressNode) = keys["address"] else { throw fail(node, "\(at).address", "missing (HOST:PORT)") }
        let text = try nonEmptyString(addressNode, "\(at).address")
        guard let address = HostPort(parsing: text, defaultPort: kind.defaultPort) else {
            throw fail(addressNode, "\(at).address", "'\(text)' is not HOST:PORT (IPv6 in brackets: [::1]:1883)")
        }
        var listener = ListenerConfiguration(kind: kind, host: address.host, port: address.port)
        let tlsKeys = ["certificate", "privateKey", "clientCertificates", "trustedCertificates"]
        if !kind.isTLS {
            if let key = tlsKeys.first(where: { keys[$0] != nil }) {
                throw fail(keys[key]!.key, "\(at).\(key)", "only an mqtts or https listener takes TLS settings")
            }
            return listener
        }
        guard let (_, certificate) = keys["certificate"] else {
            throw fail(node, "\(at).certificate", "an \(kind.rawValue) listener needs its certificate (PEM file)")
        }
        guard let (_, privateKey) = keys["privateKey"] else {
            throw fail(node, "\(at).privateKey", "an \(kind.rawValue) listener needs its private key (PEM file)")
        }
        listener.certificate = try path(certificate, "\(at).certificate")
        listener.privateKey = try path(privateKey, "\(at).privateKey")
        if let (_, value) = keys["clientCertificates"] {
            listener.clientCertificates = try choice(value, "\(at).clientCertificates", ListenerConfiguration.ClientCertificates.self)
        }
        if let (_, value) = keys["trustedCertificates"] {
            for (index, item) in try sequence(value, "\(at).trustedCertificates").enumerated() {
                listener.trustedCertificates.append(try path(item, "\(at).trustedCertificates[\(index)]"))
            }
        }
        return listener
    }

    func limits(_ node: Node) throws(ConfigurationError) -> LimitsConfiguration {
        let keys = try mapping(node, "limits", known: [
            "maxOutboundInflight", "outboundHighWaterBytes", "slowConsumerSeconds", "maxPacketBytes",
            "maxFiltersPerSubscribe",
            "maxSubscriptionsPerSession", "maxRetainedBytes", "maxRetainedMessages", "queueMaxMessages", "queueMaxBytes",
            "queueOverflow",
            "maxTopicBytes", "maxTopicLevels", "maxUserPropertyBytes", "maxPropertyValueBytes", "receiveMaximum",
            "topicAliasMaximum", "connectsPerSecondPerSession", "publishMessagesPerSecond", "publishBytesPerSecond",
            "maxConnections",
        ])
        var limits = LimitsConfiguration()
        for (key, range, field) in [
            ("maxSubscriptionsPerSession", LimitsConfiguration.maxSubscriptionsPerSessionRange,
             \LimitsConfiguration.maxSubscriptionsPerSession),
            ("maxRetainedBytes", LimitsConfiguration.maxRetainedBytesRange, \LimitsConfiguration.maxRetainedBytes),
            ("maxRetainedMessages", LimitsConfiguration.maxRetainedMessagesRange, \LimitsConfiguration.maxRetainedMessages),
            ("queueMaxMessages", LimitsConfiguration.queueMaxMessagesRange, \LimitsConfiguration.queueMaxMessages),
            ("queueMaxBytes", LimitsConfiguration.queueMaxBytesRange, \LimitsConfiguration.queueMaxBytes),
        ] {
            guard let (_, value) = keys[key] else { continue }
            limits[keyPath: field] = try int(value, "limits.\(key)", range: range)
        }
        if let (_, value) = keys["queueOverflow"] {
            limits.queueOverflow = try choice(value, "limits.queueOverflow", LimitsConfiguration.QueueOverflow.self)
        }
        if let (_, value) = keys["maxOutboundInflight"] {
            limits.maxOutboundInflight = try int(
                value, "limits.maxOutboundInflight", range: LimitsConfiguration.maxOutboundInflightRange)
        }
        if let (_, value) = keys["outboundHighWaterBytes"] {
            limits.outboundHighWaterBytes = try int(
                value, "limits.outboundHighWaterBytes", range: LimitsConfiguration.outboundHighWaterBytesRange)
        }
        if let (_, value) = keys["slowConsumerSeconds"] {
            limits.slowConsumerSeconds = try int(
                value, "limits.slowConsumerSeconds", range: LimitsConfiguration.slowConsumerSecondsRange)
        }
        if let (_, value) = keys["maxPacketBytes"] {
            limits.maxPacketBytes = try int(value, "limits.maxPacketBytes", range: LimitsConfiguration.maxPacketBytesRange)
        }
        if let (_, value) = keys["maxFiltersPerSubscribe"] {
            limits.maxFiltersPerSubscribe = try int(
                value, "limits.maxFiltersPerSubscribe", range: LimitsConfiguration.maxFiltersPerSubscribeRange)
        }
        for (key, range, field) in [
            ("maxTopicBytes", LimitsConfiguration.maxTopicBytesRange, \LimitsConfiguration.maxTopicBytes),
            ("maxTopicLevels", LimitsConfiguration.maxTopicLevelsRange, \LimitsConfiguration.maxTopicLevels),
            ("maxUserPropertyBytes", LimitsConfiguration.maxUserPropertyBytesRange, \LimitsConfiguration.maxUserPropertyBytes),
            ("maxPropertyValueBytes", LimitsConfiguration.maxPropertyValueBytesRange, \LimitsConfiguration.maxPropertyValueBytes),
            ("receiveMaximum", LimitsConfiguration.receiveMaximumRange, \LimitsConfiguration.receiveMaximum),
            ("topicAliasMaximum", LimitsConfiguration.topicAliasMaximumRange, \LimitsConfiguration.topicAliasMaximum),
            ("connectsPerSecondPerSession", LimitsConfiguration.connectsPerSecondPerSessionRange,
             \LimitsConfiguration.connectsPerSecondPerSession),
            ("publishMessagesPerSecond", LimitsConfiguration.publishMessagesPerSecondRange,
             \LimitsConfiguration.publishMessagesPerSecond),
            ("publishBytesPerSecond", LimitsConfiguration.publishBytesPerSecondRange,
             \LimitsConfiguration.publishBytesPerSecond),
        ] {
            if let (_, value) = keys[key] { limits[keyPath: field] = try int(value, "limits.\(key)", range: range) }
        }
        if let (_, value) = keys["maxConnections"] {
            limits.maxConnections = try int(value, "limits.maxConnections", range: LimitsConfiguration.maxConnectionsRange)
        }
        return limits
    }

    func namespace(_ node: Node) throws(ConfigurationError) -> NamespaceConfiguration {
        let keys = try mapping(node, "namespace", known: [
            "maximumClientSessionsPerAuthenticationName", "maximumSessionExpiryInHours",
            "alternativeAuthenticationNameSources", "registeredClientsOnly", "name",
        ])
        var namespace = NamespaceConfiguration()
        if let (_, value) = keys["name"] { namespace.name = try nonEmptyString(value, "namespace.name") }
        if let (_, value) = keys["maximumClientSessionsPerAuthenticationName"] {
            namespace.maximumClientSessionsPerAuthenticationName = try int(
                value, "namespace.maximumClientSessionsPerAuthenticationName", range: NamespacePolicy.sessionsPerClientRange)
        }
        if let (_, value) = keys["maximumSessionExpiryInHours"] {
            namespace.maximumSessionExpiryInHours = try int(
                value, "namespace.maximumSessionExpiryInHours", range: NamespacePolicy.expiryHoursRange)
        }
        if let (_, value) = keys["alternativeAuthenticationNameSources"] {
            for (index, item) in try sequence(value, "namespace.alternativeAuthenticationNameSources").enumerated() {
                let at = "namespace.alternativeAuthenticationNameSources[\(index)]"
                let source = try choice(item, at, AlternativeAuthenticationNameSource.self)
                guard !namespace.alternativeAuthenticationNameSources.contains(source) else {
                    throw fail(item, at, "\(source.rawValue) is listed twice")
                }
                namespace.alternativeAuthenticationNameSources.append(source)
            }
        }
        if let (_, value) = keys["registeredClientsOnly"] {
            namespace.registeredClientsOnly = try bool(value, "namespace.registeredClientsOnly")
        }
        return namespace
    }

    func client(_ node: Node, _ at: String) throws(ConfigurationError) -> ClientRecord {
        let keys = try mapping(node, at, known: [
            "authenticationName", "state", "validationScheme", "allowedThumbprints", "attributes", "description",
        ])
        guard let (_, nameNode) = keys["authenticationName"] else {
            throw fail(node, "\(at).authenticationName", "missing")
        }
        let text = try string(nameNode, "\(at).authenticationName")
        let name: AuthenticationName
        do {
            name = try AuthenticationName(validating: text)
        } catch {
            throw fail(nameNode, "\(at).authenticationName", "'\(text)' is not a valid authentication name (1-128 characters of UTF-8): \(error)")
        }
        var record = ClientRecord(authenticationName: name)
        if let (_, value) = keys["state"] { record.state = try choice(value, "\(at).state", ClientRecord.State.self) }
        if let (_, value) = keys["validationScheme"] {
            record.validationScheme = try choice(value, "\(at).validationScheme", ClientRecord.ValidationScheme.self)
        }
        if let (key, value) = keys["allowedThumbprints"] {
            guard record.validationScheme == .thumbprintMatch else {
                throw fail(key, "\(at).allowedThumbprints", "only used with validationScheme ThumbprintMatch")
            }
            let items = try sequence(value, "\(at).allowedThumbprints")
            guard (1...2).contains(items.count) else {
                throw fail(value, "\(at).allowedThumbprints", "one or two thumbprints (primary, secondary), got \(items.count)")
            }
            for (index, item) in items.enumerated() {
                let thumbprint = try string(item, "\(at).allowedThumbprints[\(index)]")
                guard let normalized = normalizedThumbprint(thumbprint) else {
                    throw fail(item, "\(at).allowedThumbprints[\(index)]",
                               "'\(thumbprint)' is not a SHA-256 thumbprint (64 hexadecimal digits, colons allowed)")
                }
                record.allowedThumbprints.append(normalized)
            }
        } else if record.validationScheme == .thumbprintMatch {
            throw fail(node, "\(at).allowedThumbprints", "validationScheme ThumbprintMatch needs one or two thumbprints")
        }
        if let (_, value) = keys["attributes"] {
            guard let mapping = value.mapping else { throw fail(value, "\(at).attributes", "expected a mapping of names to values") }
            for (key, item) in mapping {
                guard let attributeName = key.scalar?.string, !attributeName.isEmpty else {
                    throw fail(key, "\(at).attributes", "attribute names must be plain strings")
                }
                let path = "\(at).attributes.\(attributeName)"
                guard record.attributes[attributeName] == nil else { throw fail(key, path, "given twice") }
                record.attributes[attributeName] = try attribute(item, path)
            }
        }
        if let (_, value) = keys["description"] { record.description = try string(value, "\(at).description") }
        return record
    }

    /// Event Grid's attribute types: string, integer, boolean, or a list of strings.
    func attribute(_ node: Node, _ path: String) throws(ConfigurationError) -> ClientRecord.Attribute {
        if let sequence = node.sequence {
            var strings: [String] = []
            for item in sequence {
                guard let scalar = item.scalar else { throw fail(item, path, "a list attribute holds strings only") }
                strings.append(scalar.string)
            }
            return .strings(strings)
        }
        guard let scalar = node.scalar else { throw fail(node, path, "expected a string, number, boolean or list of strings") }
        // Quoted values stay strings: `"3"` is a string, `3` a number.
        if scalar.style == .plain {
            if let value = Int(scalar.string) { return .int(value) }
            switch scalar.string {
            case "true": return .bool(true)
            case "false": return .bool(false)
            default: break
            }
        }
        return .string(scalar.string)
    }
}

/// A SHA-256 thumbprint as 64 lowercase hex digits; colons and spaces (as tools print them) are dropped.
public func normalizedThumbprint(_ text: String) -> String? {
    let digits = text.lowercased().filter { $0 != ":" && $0 != " " }
    guard digits.count == 64, digits.allSatisfy(\.isHexDigit) else { return nil }
    return digits
}
