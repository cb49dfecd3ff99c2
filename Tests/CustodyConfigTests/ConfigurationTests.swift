import CustodyTesting
import CustodyModel
import Foundation
import LedgerCore
import Testing

@testable import CustodyConfig

@Suite("Configuration file")
struct ConfigurationTests {
    func parse(_ yaml: String) throws(ConfigurationError) -> CustodyConfiguration {
        try CustodyConfiguration.parse(yaml: yaml, file: "custody.yaml", baseDirectory: "/etc/custody")
    }

    /// The error for `yaml`, which must be refused.
    func refusal(_ yaml: String) -> ConfigurationError? {
        do {
            _ = try parse(yaml)
            return nil
        } catch {
            return error
        }
    }

    @Test func anEmptyFileIsTheDefaultBroker() throws {
        let config = try parse("")
        #expect(config == CustodyConfiguration())
        #expect(config.dataDir == "./data")
        #expect(config.listeners == [ListenerConfiguration(kind: .mqtt, host: "127.0.0.1", port: 1883)])
        #expect(config.namespace.maximumClientSessionsPerAuthenticationName == 10)
        #expect(config.namespace.maximumSessionExpiryInHours == 1)
        #expect(try config.policy() == NamespacePolicy.default)
    }

    @Test func theIssuesExampleReadsAsWritten() throws {
        let config = try parse("""
            dataDir: ./data
            listeners:
              - { protocol: mqtt, address: 127.0.0.1:1883 }
              - { protocol: mqtts, address: 127.0.0.1:8883, certificate: server.pem, privateKey: server.key,
                  clientCertificates: required, trustedCertificates: [ca.pem] }
            namespace:
              maximumClientSessionsPerAuthenticationName: 10
              maximumSessionExpiryInHours: 1
              alternativeAuthenticationNameSources: [ClientCertificateSubject]
              registeredClientsOnly: true
            clients:
              - { authenticationName: device-1, validationScheme: SubjectMatchesAuthenticationName, attributes: { floor: 3 } }
            """)
        #expect(config.dataDir == "/etc/custody/data")
        #expect(config.listeners.count == 2)
        let tls = config.listeners[1]
        #expect(tls.kind == .mqtts && tls.host == "127.0.0.1" && tls.port == 8883)
        #expect(tls.certificate == "/etc/custody/server.pem" && tls.privateKey == "/etc/custody/server.key")
        #expect(tls.clientCertificates == .required && tls.trustedCertificates == ["/etc/custody/ca.pem"])
        #expect(config.namespace.alternativeAuthenticationNameSources == [.clientCertificateSubject])
        #expect(config.namespace.registeredClientsOnly)
        #expect(config.clients.count == 1)
        #expect(config.clients[0].authenticationName.value == "device-1")
        #expect(config.clients[0].state == .enabled)
        #expect(config.clients[0].attributes == ["floor": .int(3)])
    }

    @Test("ledger: checkpointEvery and retention { days, maxLiveBytes }, sizes with units, retention: off")
    func ledgerSection() throws {
        let defaults = try parse("dataDir: /d")
        #expect(defaults.ledger.checkpointEvery == 100_000)
        #expect(defaults.ledger.retentionDays == 30 && defaults.ledger.maxLiveBytes == 8 << 30)
        let config = try parse("""
            ledger:
              checkpointEvery: 5000
              retention: { days: 7, maxLiveBytes: 512MiB }
            """)
        #expect(config.ledger.checkpointEvery == 5000)
        #expect(config.ledger.retentionDays == 7 && config.ledger.maxLiveBytes == 512 << 20)
        #expect(config.ledger.retentionMicroseconds == Int64(7) * 86_400 * 1_000_000)
        let onlyAge = try parse("ledger: { retention: { days: 90 } }")
        #expect(onlyAge.ledger.retentionDays == 90 && onlyAge.ledger.maxLiveBytes == nil)
        let off = try parse("ledger: { retention: off }")
        #expect(!off.ledger.archives)
        #expect(LedgerConfiguration.parseBytes("8GiB") == 8 << 30)
        #expect(LedgerConfiguration.parseBytes("100MB") == 100_000_000)
        #expect(LedgerConfiguration.parseBytes("123") == 123)
        #expect(LedgerConfiguration.parseBytes("lots") == nil)
        #expect(throws: ConfigurationError.self) { try parse("ledger: { retention: { maxLiveBytes: 10KiB } }") }
        #expect(throws: ConfigurationError.self) { try parse("ledger: { checkpointEvery: -1 }") }
        #expect(throws: ConfigurationError.self) { try parse("ledger: { retention: { weeks: 2 } }") }
    }

    @Test func everyFlagHasAKey() throws {
        let config = try parse("""
            dataDir: /var/lib/custody
            ledgerMapSizeMiB: 1024
            connectTimeoutSeconds: 5
            maxKeepAliveSeconds: 1160
            logLevel: debug
            logFormat: json
            metrics: 127.0.0.1:9100
            passwordFile: passwd
            namespace: { maximumClientSessionsPerAuthenticationName: 3, maximumSessionExpiryInHours: 8 }
            listeners: [{ protocol: ws, address: "[::1]:8080" }, { protocol: mqtt, address: 0.0.0.0 }]
            """)
        #expect(config.dataDir == "/var/lib/custody")
        #expect(config.ledgerMapSizeMiB == 1024 && config.connectTimeoutSeconds == 5)
        #expect(config.maxKeepAliveSeconds == 1160)
        #expect(config.logLevel == .debug && config.logFormat == .json)
        #expect(config.metrics == HostPort(host: "127.0.0.1", port: 9100))
        #expect(config.passwordFile == "/etc/custody/passwd")
        #expect(try config.policy() == NamespacePolicy(maximumClientSessionsPerAuthenticationName: 3, maximumSessionExpiryInHours: 8))
        #expect(config.listeners == [
            ListenerConfiguration(kind: .ws, host: "::1", port: 8080),
            ListenerConfiguration(kind: .mqtt, host: "0.0.0.0", port: 1883),
        ])
    }

    @Test func anUnknownKeyIsNamedWithItsLine() {
        let error = refusal("""
            dataDir: ./data
            namespace:
              maximumSessionExpiryInHours: 2
              maxSessions: 4
            """)
        #expect(error?.line == 4)
        #expect(error?.key == "namespace.maxSessions")
        #expect(error?.message.hasPrefix("unknown key") == true)
        #expect(error?.description.hasPrefix("custody.yaml:4: namespace.maxSessions: unknown key") == true)
        let typo = refusal("datadir: x\n")
        #expect(typo?.message.contains("did you mean dataDir?") == true)
    }

    @Test(arguments: [
        ("namespace:\n  maximumSessionExpiryInHours: 9\n", 2, "namespace.maximumSessionExpiryInHours", "from 1 to 8, got 9"),
        ("namespace:\n  maximumClientSessionsPerAuthenticationName: 0\n", 2, "namespace.maximumClientSessionsPerAuthenticationName", "from 1 to 100, got 0"),
        ("namespace:\n  maximumClientSessionsPerAuthenticationName: ten\n", 2, "namespace.maximumClientSessionsPerAuthenticationName", "got 'ten'"),
        ("namespace:\n  registeredClientsOnly: maybe\n", 2, "namespace.registeredClientsOnly", "true or false"),
        ("namespace:\n  alternativeAuthenticationNameSources: [ClientCertificateSubject, ClientCertificatePhone]\n", 2,
         "namespace.alternativeAuthenticationNameSources[1]", "'ClientCertificatePhone' is not one of"),
        ("listeners:\n  - { protocol: mqtt, address: 127.0.0.1:99999 }\n", 2, "listeners[0].address", "is not HOST:PORT"),
        ("listeners:\n  - { protocol: smtp, address: 127.0.0.1:25 }\n", 2, "listeners[0].protocol", "'smtp' is not one of mqtt, mqtts, ws"),
        ("listeners:\n  - { protocol: mqtt, address: 127.0.0.1:1883, certificate: a.pem }\n", 2, "listeners[0].certificate", "only an mqtts or https listener"),
        ("listeners:\n  - { protocol: mqtts, address: 127.0.0.1:8883 }\n", 2, "listeners[0].certificate", "needs its certificate"),
        ("listeners:\n  - { protocol: mqtt, address: 127.0.0.1:1883 }\n  - { protocol: ws, address: 127.0.0.1:1883 }\n", 3,
         "listeners[1].address", "already used by listeners[0]"),
        ("listeners: []\n", 1, "listeners", "at least one listener"),
        ("logLevel: loud\n", 1, "logLevel", "'loud' is not one of"),
        ("maxKeepAliveSeconds: 0\n", 1, "maxKeepAliveSeconds", "from 1 to 65535, got 0"),
        ("clients:\n  - { authenticationName: a }\n  - { authenticationName: A }\n", 3, "clients[1].authenticationName", "already clients[0]"),
        ("clients:\n  - { authenticationName: \"\" }\n", 2, "clients[0].authenticationName", "not a valid authentication name"),
        ("clients:\n  - { authenticationName: a, state: Paused }\n", 2, "clients[0].state", "'Paused' is not one of Enabled, Disabled"),
        ("clients:\n  - { authenticationName: a, validationScheme: ThumbprintMatch }\n", 2, "clients[0].allowedThumbprints", "needs one or two"),
        ("clients:\n  - { authenticationName: a, validationScheme: ThumbprintMatch, allowedThumbprints: [abc] }\n", 2,
         "clients[0].allowedThumbprints[0]", "not a SHA-256 thumbprint"),
        ("clients:\n  - { authenticationName: a, allowedThumbprints: [\(String(repeating: "a", count: 64))] }\n", 2,
         "clients[0].allowedThumbprints", "only used with validationScheme ThumbprintMatch"),
        ("clients:\n  - { authenticationName: a, attributes: { f: { nested: 1 } } }\n", 2, "clients[0].attributes.f", "expected a string"),
        ("namespace: { registeredClientsOnly: true }\n", 1, "namespace.registeredClientsOnly", "no clients are registered"),
    ] as [(String, Int, String, String)])
    func aBadValueIsNamedWithItsKeyAndLine(yaml: String, line: Int, key: String, words: String) {
        let error = refusal(yaml)
        #expect(error != nil, "accepted: \(yaml)")
        #expect(error?.line == line, "\(String(describing: error))")
        #expect(error?.key == key, "\(String(describing: error))")
        #expect(error?.message.contains(words) == true, "\(String(describing: error))")
    }

    @Test func brokenYAMLIsRefusedWithItsLine() {
        let error = refusal("dataDir: ./data\nlisteners: [\n  { protocol: mqtt\n")
        #expect(error?.message.hasPrefix("not valid YAML") == true)
        #expect(error?.line != nil)
        let notAMapping = refusal("- just\n- a list\n")
        #expect(notAMapping?.message == "expected a mapping of keys to values")
    }

    @Test func attributesKeepTheirTypes() throws {
        let config = try parse("""
            clients:
              - authenticationName: Device-7
                state: Disabled
                validationScheme: ThumbprintMatch
                allowedThumbprints: ["AB:CD:\(String(repeating: "0", count: 60))"]
                attributes: { floor: 3, lab: true, name: "3", rooms: [a, b], site: north }
            """)
        let record = try #require(config.clients.first)
        #expect(record.state == .disabled)
        #expect(record.allowedThumbprints == ["abcd" + String(repeating: "0", count: 60)])
        #expect(record.attributes == [
            "floor": .int(3), "lab": .bool(true), "name": .string("3"), "rooms": .strings(["a", "b"]), "site": .string("north"),
        ])
    }

    @Test func loadReadsAFileAndNamesAMissingOne() throws {
        let directory = scratchDirectory("config")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/custody.yaml"
        try "dataDir: ledger\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try CustodyConfiguration.load(file: path).dataDir == directory + "/ledger")
        #expect(throws: ConfigurationError.self) { try CustodyConfiguration.load(file: directory + "/missing.yaml") }
    }

    @Test(arguments: [
        ("127.0.0.1:1883", "127.0.0.1", 1883), ("localhost:0", "localhost", 0), ("[::1]:8883", "::1", 8883), ("example", "example", 1883),
    ] as [(String, String, Int)])
    func addresses(text: String, host: String, port: Int) {
        #expect(HostPort(parsing: text, defaultPort: 1883) == HostPort(host: host, port: port))
    }

    @Test(arguments: ["", ":1883", "::1:1883", "host:", "host:65536", "host:-1", "a b:1", "[::1"])
    func badAddresses(text: String) {
        #expect(HostPort(parsing: text, defaultPort: 1883) == nil)
    }
}

@Suite("Configuration file: limits")
struct LimitsConfigurationTests {
    @Test func limitsAreReadWithTheirDefaultsAndRanges() throws {
        let defaults = try CustodyConfiguration.parse(yaml: "dataDir: /tmp/x", file: "c.yaml")
        #expect(defaults.limits == LimitsConfiguration())
        let set = try CustodyConfiguration.parse(yaml: """
            limits:
              maxOutboundInflight: 20
              outboundHighWaterBytes: 65536
              slowConsumerSeconds: 5
              maxPacketBytes: 4096
            """, file: "c.yaml")
        #expect(set.limits.maxPacketBytes == 4_096)
        #expect(set.limits.maxOutboundInflight == 20)
        #expect(set.limits.outboundHighWaterBytes == 65_536)
        #expect(set.limits.slowConsumerSeconds == 5)
        #expect(throws: ConfigurationError.self) {
            try CustodyConfiguration.parse(yaml: "limits:\n  slowConsumerSeconds: 0\n", file: "c.yaml")
        }
        do {
            _ = try CustodyConfiguration.parse(yaml: "limits:\n  maxInflight: 5\n", file: "c.yaml")
            Issue.record("an unknown key was accepted")
        } catch {
            #expect("\(error)".contains("limits.maxInflight"), "\(error)")
        }
    }

    @Test func brokerLimitsAreReadWithTheirDefaultsAndRanges() throws {
        let defaults = LimitsConfiguration()
        #expect(defaults.maxSubscriptionsPerSession == 50)
        #expect(defaults.maxRetainedBytes == 65_536)
        #expect(defaults.maxRetainedMessages == 100_000)
        #expect(defaults.queueMaxMessages == 1_000)
        #expect(defaults.queueMaxBytes == 16_777_216)
        #expect(defaults.queueOverflow == .dropOldest)
        let set = try CustodyConfiguration.parse(yaml: """
            limits:
              maxSubscriptionsPerSession: 5
              maxRetainedBytes: 1024
              maxRetainedMessages: 10
              queueMaxMessages: 100
              queueMaxBytes: 65536
              queueOverflow: endSession
            """, file: "c.yaml")
        #expect(set.limits.maxSubscriptionsPerSession == 5)
        #expect(set.limits.maxRetainedBytes == 1_024)
        #expect(set.limits.maxRetainedMessages == 10)
        #expect(set.limits.queueMaxMessages == 100)
        #expect(set.limits.queueMaxBytes == 65_536)
        #expect(set.limits.queueOverflow == .endSession)
        // Event Grid's spelling is accepted whatever its case.
        #expect(try CustodyConfiguration.parse(yaml: "limits:\n  queueOverflow: ENDSESSION\n", file: "c.yaml")
            .limits.queueOverflow == .endSession)
        for (yaml, key) in [
            ("maxSubscriptionsPerSession: 0", "limits.maxSubscriptionsPerSession"),
            ("maxRetainedBytes: -1", "limits.maxRetainedBytes"),
            ("maxRetainedMessages: 0", "limits.maxRetainedMessages"),
            ("queueMaxMessages: lots", "limits.queueMaxMessages"),
            ("queueMaxBytes: 1", "limits.queueMaxBytes"),
            ("queueOverflow: dropNewest", "limits.queueOverflow"),
        ] {
            do {
                _ = try CustodyConfiguration.parse(yaml: "limits:\n  \(yaml)\n", file: "c.yaml")
                Issue.record("\(yaml) was accepted")
            } catch {
                #expect("\(error)".contains(key), "\(error)")
            }
        }
    }

    /// The front's limits (issue 15): Event Grid's defaults, each key read, a value out of its
    /// range named with its key.
    @Test func frontLimitsAreReadWithTheirDefaultsAndRanges() throws {
        let defaults = LimitsConfiguration()
        #expect(defaults.maxTopicBytes == 256 && defaults.maxTopicLevels == 15)
        #expect(defaults.maxUserPropertyBytes == 32_768 && defaults.maxPropertyValueBytes == 256)
        #expect(defaults.receiveMaximum == 100 && defaults.topicAliasMaximum == 10)
        #expect(defaults.connectsPerSecondPerSession == 1)
        #expect(defaults.publishMessagesPerSecond == 0 && defaults.publishBytesPerSecond == 0)
        #expect(defaults.maxConnections == nil)
        let set = try CustodyConfiguration.parse(yaml: """
            limits:
              maxTopicBytes: 128
              maxTopicLevels: 8
              maxUserPropertyBytes: 1024
              maxPropertyValueBytes: 64
              receiveMaximum: 20
              topicAliasMaximum: 0
              connectsPerSecondPerSession: 0
              publishMessagesPerSecond: 100
              publishBytesPerSecond: 1000000
              maxConnections: 5000
            """, file: "c.yaml").limits
        #expect(set.maxTopicBytes == 128 && set.maxTopicLevels == 8)
        #expect(set.maxUserPropertyBytes == 1_024 && set.maxPropertyValueBytes == 64)
        #expect(set.receiveMaximum == 20 && set.topicAliasMaximum == 0)
        #expect(set.connectsPerSecondPerSession == 0)
        #expect(set.publishMessagesPerSecond == 100 && set.publishBytesPerSecond == 1_000_000)
        #expect(set.maxConnections == 5_000)
        for (key, value) in [
            ("maxTopicBytes", "0"), ("maxTopicLevels", "40000"), ("maxPropertyValueBytes", "0"), ("receiveMaximum", "0"),
            ("topicAliasMaximum", "70000"), ("connectsPerSecondPerSession", "-1"), ("publishMessagesPerSecond", "-5"),
            ("publishBytesPerSecond", "x"), ("maxConnections", "0"),
        ] {
            do {
                _ = try CustodyConfiguration.parse(yaml: "limits:\n  \(key): \(value)\n", file: "c.yaml")
                Issue.record("limits.\(key): \(value) was accepted")
            } catch {
                #expect("\(error)".contains("limits.\(key)"), "\(error)")
            }
        }
    }
}
