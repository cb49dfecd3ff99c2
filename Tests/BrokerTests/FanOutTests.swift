import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// Counts instead of keeping: a sink for many subscribers.
final class CountingSink: BrokerSink, @unchecked Sendable {
    private let lock = NSLock()
    private var publishes = 0
    private var lastPayload: ByteBuffer?

    func send(_ packets: [MQTTPacket]) {
        lock.lock()
        for case .publish(let p) in packets {
            publishes += 1
            lastPayload = p.payload
        }
        lock.unlock()
    }

    var count: Int { lock.lock(); defer { lock.unlock() }; return publishes }
    var last: ByteBuffer? { lock.lock(); defer { lock.unlock() }; return lastPayload }
}

@Suite("Fan-out")
struct FanOutTests {
    /// One PUBLISH to many subscribers: every one gets it, the payload is the publisher's
    /// buffer (not a copy), and the time per delivery is printed (debug build).
    @Test(arguments: [MQTTQoS.atMostOnce, .atLeastOnce])
    func oneMessageToAThousandSubscribers(_ qos: MQTTQoS) async throws {
        let broker = try Broker(directory: nil)
        let subscribers = 1000, messages = 50
        var sinks: [CountingSink] = []
        var sessions: [BrokerSession] = []
        for i in 0..<subscribers {
            let sink = CountingSink()
            let session = broker.attach(
                session: name("s\(i)"), persistent: false, sessionPresent: false, protocolVersion: .mqtt5,
                receiveMaximum: 65535, sink: sink)
            _ = try await session.handle(subscribe([(i % 2 == 0 ? "sensors/+/temp" : "sensors/#", .atLeastOnce)]))
            sinks.append(sink)
            sessions.append(session)
        }
        let publisher = broker.connect("pub")
        let body = ByteBuffer(repeating: 0x61, count: 256)
        let clock = ContinuousClock()
        let started = clock.now
        for m in 1...messages {
            let packet = MQTTPacket.publish(MQTTPublish(
                topicName: "sensors/k\(m)/temp", payload: body, qos: qos,
                packetIdentifier: qos == .atMostOnce ? nil : UInt16(m)))
            _ = try await publisher.session.handle(packet)
        }
        let elapsed = clock.now - started
        let deliveries = subscribers * messages
        let perDelivery = elapsed / deliveries
        print("fan-out QoS \(qos.rawValue): \(deliveries) deliveries in \(elapsed) (\(perDelivery) each, debug build)")
        #expect(sinks.allSatisfy { $0.count == messages })
        // Same storage as the publisher's buffer: nothing was copied per subscriber.
        let delivered = try #require(sinks.last?.last)
        let same = delivered.withUnsafeReadableBytes { a in body.withUnsafeReadableBytes { b in a.baseAddress == b.baseAddress } }
        #expect(same)
        _ = sessions
    }

    /// Sequential QoS 1 publishes to a persistent subscriber: each waits for its own commit,
    /// so this measures the commit (fsync) latency of the broker store.
    @Test func sequentialPersistentPublishLatency() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 10_000, queueMaxBytes: 1 << 40))
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        let pub = broker.connect("pub")
        let clock = ContinuousClock()
        let started = clock.now
        let count = 200
        for i in 1...count {
            _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i)))
        }
        let elapsed = clock.now - started
        print("persistent QoS 1, one publisher: \(count) in \(elapsed) (\(elapsed / count) per PUBACK)")
        #expect(broker.info(name("sub"))?.queued == count)
    }
}

@Suite("Payload storage")
struct PayloadStorageTests {
    /// A small payload sliced from a large read buffer is copied once when it is held (so a
    /// queue does not pin receive buffers); a payload that is its own buffer is shared.
    @Test func heldPayloadsDoNotPinLargeBuffers() async throws {
        let broker = try Broker(directory: nil)
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        broker.detach(sub.session)
        var big = ByteBufferAllocator().buffer(capacity: 65536)
        big.writeString(String(repeating: "z", count: 65000))
        let slice = big.getSlice(at: 100, length: 10)!
        let pub = broker.connect("pub")
        _ = try await pub.session.handle(.publish(MQTTPublish(topicName: "t", payload: slice, qos: .atLeastOnce, packetIdentifier: 1)))
        let back = broker.connect("sub", persistent: true, present: true)
        let got = try #require(back.sink.takePublishes().first)
        #expect(got.payload == slice)
        #expect(got.payload.storageCapacity < 4096)
    }
}
