import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

@Suite("StoreBatch")
struct StoreBatchTests {
    @Test func operationsKeepTheirOrder() {
        var batch = StoreBatch()
        #expect(batch.isEmpty)
        batch.put(.messages, key: [1], value: [9])
        batch.delete(.sessions, key: [2])
        batch.deletePrefix(.sessions, prefix: [3])
        #expect(!batch.isEmpty)
        #expect(batch.operations.count == 3)
        guard case .put(.messages, let key, let value) = batch.operations[0] else { Issue.record("not a put"); return }
        #expect(key == [1] && value == [9])
        guard case .delete(.sessions, let deleted) = batch.operations[1] else { Issue.record("not a delete"); return }
        #expect(deleted == [2])
        guard case .deletePrefix(.sessions, let prefix) = batch.operations[2] else { Issue.record("not a prefix"); return }
        #expect(prefix == [3])
    }

    @Test func heldDeliveriesCanBeTakenOver() {
        let session = SessionState(name: SessionName(unchecked: "s"), persistent: true)
        let message = Message(publish: MQTTPublish(topicName: "t", payload: ByteBuffer(string: "x"), qos: .atLeastOnce), receivedAt: 0)
        let delivery = OutboundMessage(sequence: 1, message: message, qos: .atLeastOnce, retain: false, identifiers: [])
        var batch = StoreBatch()
        batch.hold(delivery, for: session)
        #expect(batch.heldUntilCommit.count == 1)
        #expect(batch.isEmpty, "held deliveries are not writes")
        let held = batch.takeHeld()
        #expect(held.count == 1 && held[0].delivery === delivery && held[0].session === session)
        #expect(batch.heldUntilCommit.isEmpty)
    }

    /// The one place a message is stored for a persistent session: the message once, however
    /// many deliveries refer to it; each delivery held until the commit.
    @Test func aMessageIsStoredOnceForEveryDeliveryThatHoldsIt() throws {
        let broker = try Broker(directory: nil, timers: .manual)
        defer { broker.close() }
        let message = Message(publish: MQTTPublish(topicName: "t", payload: ByteBuffer(string: "x"), qos: .atLeastOnce), receivedAt: 0)
        var batch = StoreBatch()
        for n in 1...3 {
            let session = SessionState(name: SessionName(unchecked: "s\(n)"), persistent: true)
            let delivery = OutboundMessage(sequence: UInt64(n), message: message, qos: .atLeastOnce, retain: false, identifiers: [])
            broker.storeAndHold(delivery, for: session, &batch)
            #expect(delivery.stored && !delivery.durable)
        }
        #expect(message.storeKey != 0)
        #expect(message.references == 3)
        #expect(batch.operations.count == 1, "one put of the message; the delivery records come with the queue")
        #expect(batch.heldUntilCommit.count == 3)
    }
}
