import Foundation
import MQTTCodec
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A limit changed by SIGHUP applies to the connections made after it; those open keep the
/// limits they began with (README "Limits").
@Suite("Limits reloaded")
struct LimitReloadTests {
    @Test func aReloadAppliesToNewConnections() async throws {
        try await offPool {
            let directory = scratchDirectory("limit-reload")
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let config = directory + "/custody.yaml"
            func write(filters: Int, receiveMaximum: Int) throws {
                try """
                    limits:
                      maxFiltersPerSubscribe: \(filters)
                      receiveMaximum: \(receiveMaximum)
                    """.write(toFile: config, atomically: true, encoding: .utf8)
            }
            try write(filters: 2, receiveMaximum: 50)
            let custody = try RunningCustody("limit-reload", arguments: ["--config", config])
            defer { custody.cleanUp() }
            func subscribeThree(_ client: RawClient, id: UInt16) throws -> [MQTTReasonCode] {
                try client.send(.subscribe(MQTTSubscribe(packetIdentifier: id, subscriptions: ["a", "b", "c"].map {
                    MQTTSubscription(topicFilter: $0, options: MQTTSubscriptionOptions(qos: .atMostOnce))
                })))
                guard case .suback(let ack)? = try client.receive() else { throw E2EError.unexpected("no SUBACK") }
                return ack.reasonCodes
            }
            let before = try RawClient(port: custody.port)
            let first = try before.connect("before")
            #expect(first.properties.receiveMaximum == 50)
            #expect(try subscribeThree(before, id: 1) == [.grantedQoS0, .grantedQoS0, .quotaExceeded])

            try write(filters: 3, receiveMaximum: 60)
            kill(custody.process.processIdentifier, SIGHUP)
            try custody.waitForOutput(containing: "SIGHUP: registry reloaded", timeout: 10)
            let after = try RawClient(port: custody.port)
            let second = try after.connect("after")
            #expect(second.properties.receiveMaximum == 60)
            #expect(try subscribeThree(after, id: 1) == [.grantedQoS0, .grantedQoS0, .grantedQoS0])
            // The connection made before keeps the limit it began with.
            #expect(try subscribeThree(before, id: 2) == [.grantedQoS0, .grantedQoS0, .quotaExceeded])
        }
    }
}
