import MQTTCodec
import NIOCore
import SessionLedger
import Testing

@testable import MQTTFront

// The pieces the limits are made of, with the time given: token buckets, the connect-rate
// table (and that it forgets), the publish budget, the outbound Topic Aliases.

private let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

@Suite("limit primitives")
struct LimitPrimitivesTests {
    @Test func aBucketRefusesWhenEmptyAndRefillsAtItsRate() {
        var bucket = TokenBucket(rate: 2, capacity: 2, now: t0)
        // Half a second later: one token back.
        let taken = [t0, t0, t0, t0 + .milliseconds(500), t0 + .milliseconds(500)].map { bucket.take(now: $0) }
        #expect(taken == [true, true, false, true, false])
        // Never more than the capacity, however long it waited.
        #expect(bucket.isFull(at: t0 + .seconds(60)))
        #expect(!bucket.isFull(at: t0 + .milliseconds(600)))
    }

    @Test func aChargedBucketOwesAndSaysWhenItHasPaid() {
        var bucket = TokenBucket(rate: 10, capacity: 10, now: t0)
        bucket.charge(30, now: t0)
        // 20 owed at 10 a second: 2 s.
        let wait = bucket.timeUntilPaid(at: t0)
        #expect(wait >= .seconds(2) && wait < .milliseconds(2_001))
        #expect(bucket.timeUntilPaid(at: t0 + .seconds(2)) == .zero)
        #expect(bucket.timeUntilPaid(at: t0 + .seconds(1)) > .zero)
    }

    @Test func oneConnectASecondPerSessionNameAndClient() {
        let limiter = ConnectRateLimiter(rate: 1)
        let dev = AuthenticationName(unchecked: "dev")
        let s1 = SessionName(unchecked: "s1")
        #expect(limiter.admit(dev, s1, now: t0))
        #expect(!limiter.admit(dev, s1, now: t0 + .milliseconds(999)))
        // Refusals spend nothing: a second after the last admitted one, it is admitted.
        #expect(limiter.admit(dev, s1, now: t0 + .seconds(1)))
        // Another session name, or the same name from another client, has its own budget:
        // nobody can use up someone else's.
        #expect(limiter.admit(dev, SessionName(unchecked: "s2"), now: t0 + .seconds(1)))
        #expect(limiter.admit(AuthenticationName(unchecked: "intruder"), s1, now: t0 + .seconds(1)))
        // Authentication names compare without case.
        #expect(!limiter.admit(AuthenticationName(unchecked: "DEV"), s1, now: t0 + .seconds(1)))
    }

    @Test func aBurstOfOneSecondsWorthAtHigherRates() {
        let limiter = ConnectRateLimiter(rate: 3)
        let dev = AuthenticationName(unchecked: "dev")
        let s = SessionName(unchecked: "s")
        #expect((0..<3).allSatisfy { _ in limiter.admit(dev, s, now: t0) })
        #expect(!limiter.admit(dev, s, now: t0))
    }

    @Test func theConnectRateTableForgetsNamesThatRefilled() {
        let limiter = ConnectRateLimiter(rate: 1)
        let dev = AuthenticationName(unchecked: "dev")
        let many = ConnectRateLimiter.smallestSweep * 3
        for index in 0..<many {
            // One fresh name every millisecond: a name is forgotten a second after its CONNECT.
            _ = limiter.admit(dev, SessionName(unchecked: "s\(index)"), now: t0 + .milliseconds(Int64(index)))
        }
        // Never more than the sweep threshold, doubled by what a second of CONNECTs holds.
        #expect(limiter.count <= 2 * max(ConnectRateLimiter.smallestSweep, 1_000) + 1)
        _ = limiter.admit(dev, SessionName(unchecked: "late"), now: t0 + .seconds(3600))
        #expect(limiter.count < many)
    }

    @Test func thePublishBudgetHoldsReadsUntilEveryDebtIsPaid() {
        #expect(PublishThrottle(messagesPerSecond: 0, bytesPerSecond: 0, now: t0) == nil)
        var throttle = PublishThrottle(messagesPerSecond: 10, bytesPerSecond: 1_000, now: t0)!
        for _ in 0..<10 { throttle.charge(bytes: 10, now: t0) }
        #expect(throttle.wait(at: t0) == nil)
        throttle.charge(bytes: 10, now: t0)
        guard let (wait, limit) = throttle.wait(at: t0) else { Issue.record("no wait"); return }
        #expect(limit == .publishMessagesPerSecond)
        #expect(wait > .zero && wait <= .milliseconds(101))
        // Bytes: 2,000 over a 1,000 a second budget (1,110 spent in all).
        throttle.charge(bytes: 2_000, now: t0 + .seconds(1))
        guard let (byteWait, byteLimit) = throttle.wait(at: t0 + .seconds(1)) else { Issue.record("no wait"); return }
        #expect(byteLimit == .publishBytesPerSecond)
        #expect(byteWait > .seconds(1) && byteWait < .seconds(3))
    }

    @Test func outboundAliasesGoToTheFirstTopicsAndThenStandForThem() {
        var aliases = OutboundTopicAliases(maximum: 2, clientMaximumPacketSize: nil)
        func send(_ topic: String) -> MQTTPublish {
            aliases.outbound(MQTTPublish(topicName: topic, payload: ByteBuffer(string: "p"), qos: .atLeastOnce, packetIdentifier: 1))
        }
        let first = send("a/1")
        #expect(first.topicName == "a/1" && first.properties.topicAlias == 1)
        let again = send("a/1")
        #expect(again.topicName == "" && again.properties.topicAlias == 1)
        #expect(send("b/2").properties.topicAlias == 2)
        // Full: a third topic is sent as it is, and keeps being sent so.
        let third = send("c/3")
        #expect(third.topicName == "c/3" && third.properties.topicAlias == nil)
        #expect(send("b/2").topicName == "")
        #expect(aliases.count == 2)
    }

    @Test func anAliasIsNotSetOnAPublishTheClientWouldNotTake() {
        // A PUBLISH of exactly 20 bytes fits; with an alias it would not.
        let publish = MQTTPublish(topicName: "topic", payload: ByteBuffer(repeating: 0x61, count: 11))
        let size = try? MQTTEncoder(protocolVersion: .mqtt5).encodedSize(of: .publish(publish))
        var aliases = OutboundTopicAliases(maximum: 5, clientMaximumPacketSize: size)
        let sent = aliases.outbound(publish)
        #expect(sent == publish)
        #expect(aliases.count == 0)
        var roomy = OutboundTopicAliases(maximum: 5, clientMaximumPacketSize: (size ?? 0) + 3)
        let aliased = roomy.outbound(publish)
        #expect(aliased.properties.topicAlias == 1)
    }
}
