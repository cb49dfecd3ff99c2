import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import Synchronization
import Testing

@testable import Broker

/// What QoS 1 to persistent sessions writes (issue 17): acknowledgements' deletes kept back
/// while the store's writer is busy and written together, and the in-flight record of a
/// delivery taken from the queue written only when the broker stops.
@Suite("Durable message path")
struct DurablePathTests {
    /// The delivery records in the store, in key order.
    func deliveryRecords(_ store: BrokerStore) throws -> [BrokerRecords.DeliveryRecord] {
        var records: [BrokerRecords.DeliveryRecord] = []
        try store.forEach(.sessions) { key, value in
            guard let separator = key.firstIndex(of: 0), key[separator + 1] == BrokerRecords.deliveryKind,
                let record = BrokerRecords.decodeDelivery(value)
            else { return }
            records.append(record)
        }
        return records
    }

    /// Polls `condition` for up to 10 s (unwaited writes land when the writer gets to them).
    func eventually(_ condition: () throws -> Bool) async throws -> Bool {
        for _ in 0..<1000 {
            if try condition() { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return try condition()
    }

    @Test("A QoS 1 delivery taken from the queue keeps its queued record until the broker stops; a clean restart resends it with DUP and its identifier")
    func pumpedQoS1RecordIsWrittenAtClose() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        do {
            let broker = try Broker(directory: directory)
            let sub = broker.connect("sub", persistent: true, receiveMaximum: 1)
            _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
            let pub = broker.connect("pub")
            for i in 1...2 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i))) }
            #expect(sub.sink.takePublishes().map(\.packetIdentifier) == [1])
            _ = try await sub.session.handle(.puback(ack(1)))
            #expect(sub.sink.takePublishes().map(\.packetIdentifier) == [2])
            let store = try #require(broker.tapStore)
            // The PUBACK's delete lands; the second delivery's record was not rewritten.
            #expect(try await eventually { try deliveryRecords(store).count == 1 })
            let pending = try #require(try deliveryRecords(store).first)
            #expect(pending.state == .queued)
            broker.close()
        }
        do {
            let store = try BrokerStore(directory: directory)
            let records = try deliveryRecords(store)
            store.close()
            #expect(records.map(\.state) == [.awaitingAck])
            #expect(records.map(\.packetIdentifier) == [2])
        }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true, present: true, receiveMaximum: 1)
        #expect(sub.sink.take() == [
            .publish(MQTTPublish(topicName: "t", payload: payload("2"), qos: .atLeastOnce, duplicate: true, packetIdentifier: 2))
        ])
    }

    @Test("Acknowledgements that arrive while the store's writer is busy are written as one submission once it is idle")
    func acknowledgementsWhileTheWriterIsBusyBecomeOneSubmission() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let broker = try Broker(directory: directory)
        defer { broker.close() }
        let sub = broker.connect("sub", persistent: true)
        _ = try await sub.session.handle(subscribe([("t", .atLeastOnce)]))
        let pub = broker.connect("pub")
        for i in 1...10 { _ = try await pub.session.handle(publish("t", "\(i)", qos: .atLeastOnce, id: UInt16(i))) }
        #expect(sub.sink.takePublishes().map(\.packetIdentifier) == Array(1...10))
        let store = try #require(broker.tapStore)
        #expect(try deliveryRecords(store).count == 10)

        // The writer is held inside a commit (an empty one) while the PUBACKs come.
        let commits = Mutex<[BrokerCommitStatistics]>([])
        let held = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let holding = Atomic<Bool>(true)
        store.onCommit = { statistics in
            if holding.exchange(false, ordering: .acquiringAndReleasing) {
                held.signal()
                release.wait()
                return
            }
            commits.withLock { $0.append(statistics) }
        }
        store.submit([])
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                held.wait()
                continuation.resume()
            }
        }
        for i in 1...10 { _ = try await sub.session.handle(.puback(ack(UInt16(i)))) }
        release.signal()
        #expect(try await eventually { try deliveryRecords(store).isEmpty && store.count(.messages) == 0 })
        // Ten records and ten messages deleted in one submission, not ten.
        let seen = commits.withLock { $0 }
        #expect(seen.map(\.requests) == [1], "\(seen)")
        #expect(seen.map(\.operations) == [20], "\(seen)")
    }
}
