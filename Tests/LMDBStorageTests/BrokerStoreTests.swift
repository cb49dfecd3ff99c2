import Foundation
import Testing

import LedgerCore
@testable import LMDBStorage

/// The broker's LMDB store: group commit, range deletes, reopening.
@Suite("Broker message store")
struct BrokerStoreTests {
    func contents(_ store: BrokerStore, _ table: BrokerTable) throws -> [[UInt8]: [UInt8]] {
        var all: [[UInt8]: [UInt8]] = [:]
        try store.forEach(table) { key, value in all[Array(key)] = Array(value) }
        return all
    }

    @Test("The store's map grows on demand up to its maximum; past it writes fail as a full store, and it goes on")
    func mapGrowsThenFailsWithoutEndingTheStore() async throws {
        // On a tmpfs where there is one: hundreds of 64 KiB commits would hold up the fsyncs of
        // the tests beside it on ext4.
        let directory = FileManager.default.fileExists(atPath: "/dev/shm")
            ? "/dev/shm/custody-store-\(UUID().uuidString)" : scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try BrokerStore(directory: directory, options: BrokerStoreOptions(mapSize: 24 << 20))
        defer { store.close() }
        #expect(try store.mapUsage().mappedBytes == 8 << 20)
        let value = [UInt8](repeating: 7, count: 64 << 10)
        var written = 0
        var failure: LedgerError?
        for i in 0..<1000 {
            let result: Result<Void, LedgerError> = await withCheckedContinuation { continuation in
                store.submit([.put(.messages, key: Array("m\(i)".utf8), value: value)]) { continuation.resume(returning: $0) }
            }
            if case .failure(let error) = result {
                failure = error
                break
            }
            written += 1
        }
        // 64 KiB each: more than fit in the first 8 MiB, fewer than in 24 MiB.
        #expect(written > 200, "\(written)")
        #expect(try store.mapUsage().mappedBytes == 24 << 20)
        let error = try #require(failure)
        #expect(error.isMapFull, "\(error)")
        // The store goes on: deletes make room, and writes succeed again.
        try await store.write((0..<100).map { .delete(.messages, key: Array("m\($0)".utf8)) })
        try await store.write([.put(.messages, key: Array("again".utf8), value: value)])
        #expect(try store.count(.messages) == written - 100 + 1)
    }

    @Test("A numbered put's key is the prefix and the number, big endian; a numbered delete removes exactly it")
    func numberedKeysAreThePrefixAndTheNumberBigEndian() async throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try BrokerStore(directory: directory)
        defer { store.close() }
        let prefix = Array("s\u{0}D".utf8)
        try await store.write([
            .putNumbered(.sessions, prefix: prefix, number: 0x0102_0304_0506_0708, value: [1]),
            .putNumbered(.sessions, prefix: prefix, number: 9, value: [2]),
            .putNumbered(.messages, prefix: [], number: 7, value: [3]),
        ])
        #expect(try contents(store, .sessions) == [
            prefix + [1, 2, 3, 4, 5, 6, 7, 8]: [1],
            prefix + [0, 0, 0, 0, 0, 0, 0, 9]: [2],
        ])
        #expect(try contents(store, .messages) == [[0, 0, 0, 0, 0, 0, 0, 7]: [3]])
        try await store.write([
            .deleteNumbered(.sessions, prefix: prefix, number: 9),
            .deleteNumbered(.messages, prefix: [], number: 7),
            .deleteNumbered(.messages, prefix: [], number: 8),  // not there: not an error
        ])
        #expect(try contents(store, .sessions) == [prefix + [1, 2, 3, 4, 5, 6, 7, 8]: [1]])
        #expect(try contents(store, .messages).isEmpty)
    }

    @Test func putDeleteAndPrefixDeleteSurviveReopen() async throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try BrokerStore(directory: directory)
            try await store.write([
                .put(.sessions, key: Array("a\u{0}S1".utf8), value: [1]),
                .put(.sessions, key: Array("a\u{0}S2".utf8), value: [2]),
                .put(.sessions, key: Array("ab\u{0}S1".utf8), value: [3]),
                .put(.sessions, key: Array("b\u{0}S1".utf8), value: [4]),
                .put(.messages, key: [0, 0, 0, 0, 0, 0, 0, 1], value: [9, 9]),
            ])
            try await store.write([
                .deletePrefix(.sessions, prefix: Array("a\u{0}".utf8)),
                .delete(.sessions, key: Array("missing".utf8)),
                .deletePrefix(.sessions, prefix: Array("zzz".utf8)),
            ])
            store.close()
        }
        let store = try BrokerStore(directory: directory)
        defer { store.close() }
        #expect(try contents(store, .sessions) == [Array("ab\u{0}S1".utf8): [3], Array("b\u{0}S1".utf8): [4]])
        #expect(try contents(store, .messages) == [[0, 0, 0, 0, 0, 0, 0, 1]: [9, 9]])
        // A prefix delete that runs to the end of the table.
        try await store.write([.deletePrefix(.sessions, prefix: Array("b".utf8))])
        #expect(try contents(store, .sessions) == [Array("ab\u{0}S1".utf8): [3]])
        #expect(try store.count(.sessions) == 1)
    }

    @Test func waitingWritesShareOneCommitAndAnswerInOrder() async throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try BrokerStore(directory: directory)
        let commits = Locked(0)
        store.onCommit = { _ in commits.withLock { $0 += 1 } }
        let order = Locked<[Int]>([])
        let writers = 400
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<writers {
                group.addTask {
                    var key = UInt64(i).bigEndian
                    let bytes = withUnsafeBytes(of: &key) { Array($0) }
                    let result: Result<Void, LedgerError> = await withCheckedContinuation { c in
                        store.submit([.put(.messages, key: bytes, value: Array(repeating: 7, count: 100))]) { r in
                            order.withLock { $0.append(i) }
                            c.resume(returning: r)
                        }
                    }
                    #expect((try? result.get()) != nil)
                }
            }
        }
        store.close()
        let committed = commits.withLock { $0 }
        print("broker store: \(writers) concurrent writes in \(committed) commits")
        #expect(committed < writers)
        #expect(order.withLock { $0.count } == writers)
        let reopened = try BrokerStore(directory: directory)
        defer { reopened.close() }
        #expect(try reopened.count(.messages) == writers)
    }

    @Test func submissionsAfterCloseFail() throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try BrokerStore(directory: directory)
        store.close()
        let failed = Locked(false)
        store.submit([.put(.messages, key: [1], value: [1])]) { result in
            if case .failure(.closed) = result { failed.withLock { $0 = true } }
        }
        #expect(failed.withLock { $0 })
    }

    @Test func aLedgerDirectoryIsNotABrokerStoreOfANewerFormat() throws {
        let directory = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try writeForeignLMDB(at: directory, tables: ["meta"], format: 9)
        #expect(throws: LedgerError.unsupportedFormat(found: 9, supported: 1)) {
            try BrokerStore(directory: directory)
        }
    }
}
