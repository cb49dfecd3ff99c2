import CustodyTesting
import Foundation
import MQTTCodec
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Malformed input over real sockets: 300 connections, each a valid v5 CONNECT followed by
/// a mutated packet (fixed seed), while a well-behaved client stays connected. Each bad
/// stream ends only its own connection, with the reason code the codec names; the
/// bystander and custody see nothing of it.
@Suite("Malformed streams end only their own connection")
struct MalformedStreamTests {

    private static func encoded(_ packet: MQTTPacket) throws -> [UInt8] {
        var buffer = ByteBuffer()
        _ = try MQTTEncoder(protocolVersion: .mqtt5).encode(packet, into: &buffer)
        return Array(buffer.readableBytesView)
    }

    @Test func eachBadStreamEndsItsOwnConnectionWithTheCodecsReasonCode() async throws {
        try await offPool {
            let followers: [MQTTPacket] = [
                .publish(MQTTPublish(
                    topicName: "fuzz/t", payload: ByteBuffer(string: "p"), qos: .atLeastOnce, packetIdentifier: 5,
                    properties: [.messageExpiryInterval(60), .contentType("text/plain")])),
                .subscribe(MQTTSubscribe(
                    packetIdentifier: 7,
                    subscriptions: [MQTTSubscription(topicFilter: "fuzz/+", options: MQTTSubscriptionOptions(qos: .atLeastOnce))])),
                .unsubscribe(MQTTUnsubscribe(packetIdentifier: 8, topicFilters: ["fuzz/+"])),
                .puback(MQTTPublishResponse(packetIdentifier: 3)),
                .pingreq,
                .disconnect(MQTTDisconnect(reasonCode: .normalDisconnection, properties: [.sessionExpiryInterval(0)])),
            ]
            let templates = try followers.map(Self.encoded)
            try withCustody("malformed") { custody in
                let bystander = try RawClient(port: custody.port)
                #expect(try bystander.connect("bystander").reasonCode == .success)
                var random = SplitMix(seed: 0x5EED_0F_C0DE)
                var checked = 0
                for index in 0..<300 {
                    var bad = templates[Int.random(in: 0..<templates.count, using: &random)]
                    for _ in 0..<Int.random(in: 1...3, using: &random) where !bad.isEmpty {
                        let at = Int.random(in: 0..<bad.count, using: &random)
                        switch Int.random(in: 0..<4, using: &random) {
                        case 0: bad[at] ^= UInt8(1) << UInt8.random(in: 0...7, using: &random)
                        case 1: bad[at] = UInt8.random(in: 0...255, using: &random)
                        case 2: bad.insert(UInt8.random(in: 0...255, using: &random), at: at)
                        default: bad.remove(at: at)
                        }
                    }
                    // What the codec makes of the bad bytes after a v5 CONNECT.
                    var decoder = MQTTDecoder(protocolVersion: .mqtt5)
                    var buffer = ByteBuffer(bytes: bad)
                    var firstFailure: MQTTDecodingError?
                    if case .failure(let error) = decoder.decode(&buffer) { firstFailure = error }

                    let client = try RawClient(port: custody.port)
                    #expect(try client.connect("fuzz-\(index)").reasonCode == .success)
                    try client.sendRaw(bad)
                    shutdown(client.fd, Int32(SHUT_WR))
                    var last: MQTTPacket?
                    while let packet = try client.receive(timeout: 10) { last = packet }
                    if let firstFailure {
                        checked += 1
                        guard case .disconnect(let disconnect) = last else {
                            Issue.record("input \(index) (\(bad)): \(firstFailure), but the server sent \(String(describing: last))")
                            continue
                        }
                        #expect(disconnect.reasonCode == firstFailure.reasonCode, "input \(index): \(bad)")
                    }
                }
                #expect(checked > 50)
                try bystander.send(.pingreq)
                #expect(try bystander.receive() == .pingresp)
                #expect(custody.process.isRunning)
            }
        }
    }
}
