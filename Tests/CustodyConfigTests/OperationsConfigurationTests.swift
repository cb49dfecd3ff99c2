import CustodyModel
import Foundation
import LedgerCore
import Testing

@testable import CustodyConfig

/// The operations keys: logFormat, metrics, metricsAllowRemote, eventSubscribers.
@Suite("Configuration file: operations keys")
struct OperationsConfigurationTests {
    func parse(_ yaml: String) throws(ConfigurationError) -> CustodyConfiguration {
        try CustodyConfiguration.parse(yaml: yaml, file: "custody.yaml", baseDirectory: "/etc/custody")
    }

    @Test func theKeysReadAsWritten() throws {
        let config = try parse("""
            logFormat: json
            metrics: 127.0.0.1:9464
            metricsAllowRemote: true
            eventSubscribers: [ops, Monitoring-1]
            """)
        #expect(config.logFormat == .json)
        #expect(config.metrics == HostPort(host: "127.0.0.1", port: 9464))
        #expect(config.metricsAllowRemote)
        #expect(config.eventSubscribers.map(\.value) == ["ops", "Monitoring-1"])
        let defaults = try parse("")
        #expect(defaults.metrics == nil && !defaults.metricsAllowRemote && defaults.eventSubscribers.isEmpty)
        #expect(try parse("metrics: localhost").metrics == HostPort(host: "localhost", port: 9090))
    }

    @Test func badValuesAreNamedWithTheirKey() {
        for (yaml, key) in [
            ("metricsAllowRemote: maybe", "metricsAllowRemote"),
            ("eventSubscribers: ops", "eventSubscribers"),
            ("eventSubscribers: [\"\"]", "eventSubscribers[0]"),
            ("metrics: 'a b:1'", "metrics"),
            ("logFormat: xml", "logFormat"),
        ] {
            do {
                _ = try parse(yaml)
                Issue.record("accepted: \(yaml)")
            } catch {
                #expect("\(error)".contains(key), "\(yaml): \(error)")
            }
        }
    }

    @Test func loopbackHostsAreTold() {
        #expect(HostPort(host: "127.0.0.1", port: 1).isLoopback)
        #expect(HostPort(host: "::1", port: 1).isLoopback)
        #expect(HostPort(host: "localhost", port: 1).isLoopback)
        #expect(!HostPort(host: "0.0.0.0", port: 1).isLoopback)
        #expect(!HostPort(host: "10.1.2.3", port: 1).isLoopback)
    }
}
