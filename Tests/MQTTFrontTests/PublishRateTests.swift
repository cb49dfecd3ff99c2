import Foundation
import MQTTCodec
import NIOCore
import Testing

/// Publish rates per connection (`limits.publishMessagesPerSecond`, `limits.publishBytesPerSecond`;
/// off by default, Event Grid's are 100 messages and 1 MB a second): a client publishing faster
/// is slowed to the rate (its socket is not read) and loses nothing; another client publishing
/// meanwhile is not slowed. Bounds are generous: this is about the order of magnitude, not timing.
@Suite("Publish rate")
struct PublishRateTests {
    /// `messages` PUBLISHes of `payloadBytes` at QoS 0 from a flooder, 3 from a bystander just
    /// after; what a subscriber got within `window` seconds, and then in all.
    private func flood(
        _ custody: RunningCustody, messages: Int, payloadBytes: Int, window: Double
    ) throws -> (early: Int, bystanderEarly: Int, all: [String]) {
        let watcher = try RawClient(port: custody.port)
        #expect(try watcher.connect("rate-watcher").reasonCode == .success)
        try watcher.subscribe("rate/#")
        let flooder = try RawClient(port: custody.port)
        #expect(try flooder.connect("flooder").reasonCode == .success)
        let bystander = try RawClient(port: custody.port)
        #expect(try bystander.connect("bystander").reasonCode == .success)

        let padding = String(repeating: "p", count: max(0, payloadBytes - 4))
        var bytes: [UInt8] = []
        for index in 0..<messages {
            var buffer = ByteBuffer()
            try MQTTEncoder(protocolVersion: .mqtt5).encode(
                .publish(MQTTPublish(topicName: "rate/f", payload: ByteBuffer(string: String(format: "%04d", index) + padding))),
                into: &buffer)
            bytes += buffer.readableBytesView
        }
        // At once: the socket buffers hold it all (a few dozen KB), custody reads when it may.
        // The window runs from here, however late this thread gets to read.
        let started = Date()
        try flooder.sendRaw(bytes)
        for index in 0..<3 {
            try bystander.send(.publish(MQTTPublish(topicName: "rate/b", payload: ByteBuffer(string: "b\(index)"))))
        }
        let early = try watcher.publishes(messages + 3, within: window - Date().timeIntervalSince(started))
        let rest = try watcher.publishes(messages + 3 - early.count, within: 30)
        #expect(try flooder.isServed(), "the flooder was slowed, not cut off")
        let all = (early + rest).filter { $0.topicName == "rate/f" }.map { String(buffer: $0.payload).prefix(4) }.map(String.init)
        #expect((early + rest).filter { $0.topicName == "rate/b" }.count == 3)
        return (early.filter { $0.topicName == "rate/f" }.count, early.filter { $0.topicName == "rate/b" }.count, all)
    }

    @Test func aFastPublisherIsSlowedToTheMessageRateAndLosesNothing() async throws {
        try await offPool {
            try withCustody("publish-rate", ["--publish-messages-per-second", "20", "--metrics", "127.0.0.1:0"]) { custody in
                let (early, bystander, all) = try flood(custody, messages: 100, payloadBytes: 8, window: 1.5)
                // A burst of 20, then 20 a second: about 50 in 1.5 s; never the 100 sent.
                #expect(early <= 70, "\(early) of 100 delivered in 1.5 s at 20 a second")
                #expect(bystander == 3, "the bystander's messages waited for the flooder's")
                #expect(all == (0..<100).map { String(format: "%04d", $0) }, "every message, in order")
                #expect(try custody.limitExceeded("publishMessagesPerSecond") >= 1)
                #expect(custody.limitLines("publishMessagesPerSecond").count <= 10)
            }
        }
    }

    @Test func aFastPublisherIsSlowedToTheByteRate() async throws {
        try await offPool {
            try withCustody("publish-bytes", ["--publish-bytes-per-second", "5000", "--metrics", "127.0.0.1:0"]) { custody in
                // 60 messages of about 500 bytes: a burst of 5 KB (10 of them), then 10 a second:
                // about 25 in 1.5 s.
                let (early, _, all) = try flood(custody, messages: 60, payloadBytes: 500, window: 1.5)
                #expect(early <= 45, "\(early) of 60 messages of 500 bytes delivered in 1.5 s at 5 KB a second")
                #expect(all == (0..<60).map { String(format: "%04d", $0) })
                #expect(try custody.limitExceeded("publishBytesPerSecond") >= 1)
            }
        }
    }
}
