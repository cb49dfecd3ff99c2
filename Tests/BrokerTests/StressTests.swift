import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// A client that acknowledges what it receives, as a real one would: from the sink, on
/// another task, back into the broker.
final class AckingClient: BrokerSink, @unchecked Sendable {
    private let lock = NSLock()
    private var session: BrokerSession?
    private var payloads: Set<String> = []
    private var duplicates = 0

    private var early: [MQTTPacket] = []

    /// Packets that came before the session was known (redelivery during `attach`) are
    /// answered now, as a client answers what it read once its CONNACK is processed.
    func use(_ session: BrokerSession) {
        lock.lock()
        self.session = session
        let early = self.early
        self.early = []
        lock.unlock()
        answer(early, session)
    }

    func send(_ packets: [MQTTPacket]) {
        lock.lock()
        let session = self.session
        var answers: [MQTTPacket] = []
        for packet in packets {
            switch packet {
            case .publish(let p):
                if !payloads.insert(text(p)).inserted { duplicates += 1 }
                if p.qos == .atLeastOnce { answers.append(.puback(ack(p.packetIdentifier!))) }
                if p.qos == .exactlyOnce { answers.append(.pubrec(ack(p.packetIdentifier!))) }
            case .pubrel(let r):
                answers.append(.pubcomp(ack(r.packetIdentifier)))
            default:
                break
            }
        }
        guard let session else {
            early += answers
            lock.unlock()
            return
        }
        lock.unlock()
        answer(answers, session)
    }

    private func answer(_ answers: [MQTTPacket], _ session: BrokerSession) {
        guard !answers.isEmpty else { return }
        Task {
            for answer in answers {
                guard let more = try? await session.handle(answer) else { return }
                // PUBREL for our PUBREC: complete it.
                for case .pubrel(let r) in more { _ = try? await session.handle(.pubcomp(ack(r.packetIdentifier))) }
            }
        }
    }

    var received: Set<String> { lock.lock(); defer { lock.unlock() }; return payloads }
}

@Suite("Stress")
struct StressTests {
    /// Publishers, an acknowledging subscriber with a small window, and takeovers of the
    /// subscriber's session, all at once: every message arrives, and nothing stays behind.
    @Test func concurrentPublishersAcksAndTakeovers() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory, limits: BrokerLimits(queueMaxMessages: 100_000, queueMaxBytes: 1 << 40))
        defer { broker.close() }
        let first = AckingClient()
        let session = broker.attach(
            session: name("sub"), persistent: true, sessionPresent: false, protocolVersion: .mqtt5,
            receiveMaximum: 5, sink: first)
        first.use(session)
        _ = try await session.handle(subscribe([("t/#", .exactlyOnce)]))
        let publishers = 4, each = 150
        var clients = [first]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for p in 0..<publishers {
                group.addTask {
                    let c = broker.connect("pub\(p)", persistent: p % 2 == 0)
                    for i in 1...each {
                        let qos: MQTTQoS = i % 3 == 0 ? .exactlyOnce : .atLeastOnce
                        let answers = try await c.session.handle(publish("t/\(p)", "\(p)-\(i)", qos: qos, id: UInt16(i)))
                        if qos == .exactlyOnce {
                            #expect(answers == [.pubrec(ack(UInt16(i)))])
                            _ = try await c.session.handle(.pubrel(ack(UInt16(i))))
                        }
                    }
                }
            }
            // Meanwhile the subscriber reconnects twice (takeover, session present).
            for _ in 0..<2 {
                try await Task.sleep(for: .milliseconds(30))
                let next = AckingClient()
                let s = broker.attach(
                    session: name("sub"), persistent: true, sessionPresent: true, protocolVersion: .mqtt5,
                    receiveMaximum: 5, sink: next)
                next.use(s)
                clients.append(next)
            }
            try await group.waitForAll()
        }
        let expected = Set((0..<publishers).flatMap { p in (1...each).map { "\(p)-\($0)" } })
        let deadline = ContinuousClock.now + .seconds(30)
        func all() -> Set<String> { clients.reduce(into: Set<String>()) { $0.formUnion($1.received) } }
        while all() != expected, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(all() == expected)
        while ContinuousClock.now < deadline {
            let info = broker.info(name("sub"))
            if info?.inflight == 0 && info?.queued == 0 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let info = try #require(broker.info(name("sub")))
        #expect(info.inflight == 0)
        #expect(info.queued == 0)
        #expect(info.dropped == 0)
    }
}
