import Foundation
import LedgerCore
import MQTTCodec
import NIOCore
import Synchronization
import Testing

@testable import Broker

/// `BrokerSession.handleAtOnce`: what needs no commit is answered on the caller's thread;
/// what must be made durable first, or is not a publish or an acknowledgement, answers later.
@Suite("Answers at once")
struct AtOnceTests {
    /// What `later` heard, from whichever thread.
    final class Later: Sendable {
        let heard = Mutex<[Result<[MQTTPacket], BrokerError>]>([])
        var callback: @Sendable (Result<[MQTTPacket], BrokerError>) -> Void {
            { result in self.heard.withLock { $0.append(result) } }
        }

        /// The one answer heard, within 5 s.
        func answer() async throws -> [MQTTPacket] {
            for _ in 0..<500 {
                if let first = heard.withLock({ $0.first }) { return try first.get() }
                try await Task.sleep(for: .milliseconds(10))
            }
            throw BrokerError(.implementationSpecificError, "no answer came")
        }
    }

    @Test("QoS 0 and QoS 1 to sessions that keep nothing on disk: answered at once, delivered, later never heard")
    func publishesWithNothingToStore() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let subscriber = broker.connect("sub")
        _ = try await subscriber.session.handle(subscribe([("t/#", .atLeastOnce)]))
        let publisher = broker.connect("pub")
        let later = Later()
        #expect(try publisher.session.handleAtOnce(publish("t/a", "zero"), later: later.callback) == .answered([]))
        #expect(try publisher.session.handleAtOnce(publish("t/b", "one", qos: .atLeastOnce, id: 7), later: later.callback)
            == .answered([.puback(ack(7))]))
        let delivered = subscriber.sink.takePublishes()
        #expect(delivered.map(text) == ["zero", "one"])
        // The subscriber's PUBACK for its QoS 1 delivery: at once too.
        let id = try #require(delivered[1].packetIdentifier)
        #expect(try subscriber.session.handleAtOnce(.puback(ack(id)), later: later.callback) == .answered([]))
        try await Task.sleep(for: .milliseconds(50))
        #expect(later.heard.withLock { $0.isEmpty })
    }

    @Test("QoS 1 to a persistent session: decided at once, answered later once the message is stored")
    func publishThatMustBeStored() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let subscriber = broker.connect("kept", persistent: true)
        _ = try await subscriber.session.handle(subscribe([("t/#", .atLeastOnce)]))
        broker.detach(subscriber.session)
        let publisher = broker.connect("pub")
        let later = Later()
        #expect(try publisher.session.handleAtOnce(publish("t/a", "stored", qos: .atLeastOnce, id: 3), later: later.callback) == .decided)
        // Decided: queued for the offline session before the commit is known.
        #expect(try #require(broker.info(name("kept"))).queued == 1)
        #expect(try await later.answer() == [.puback(ack(3))])
    }

    @Test("SUBSCRIBE is answered later, and a bad PUBLISH throws at once")
    func subscribeLaterAndErrorsAtOnce() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let client = broker.connect("c")
        let later = Later()
        #expect(try client.session.handleAtOnce(subscribe([("a/+", .atMostOnce)], id: 9), later: later.callback) == .pending)
        #expect(subscribeCodes(try await later.answer()) == [.grantedQoS0])
        #expect(throws: BrokerError.self) {
            _ = try client.session.handleAtOnce(publish("a/+", "wildcard in a topic name"), later: later.callback)
        }
    }
}
