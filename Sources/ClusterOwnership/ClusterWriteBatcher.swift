import EtcdGateway
import Synchronization

/// One conditional write of a claim, a release or an ending, sent to etcd together with the
/// node's other writes of the moment in one Txn.
struct ClusterWrite: Sendable {
    /// Conditions on this write's own keys (the node's lease is compared once per Txn).
    var compare: [EtcdCompare]
    var success: [EtcdOperation]
    /// Ranges that cover every key `compare` names: read when a Txn fails, to tell which of
    /// its writes failed and to give those what etcd holds now.
    var reads: [EtcdOperation]
    /// Every key it compares or changes: no two writes of one Txn share one (etcd refuses a
    /// Txn that puts one key twice, and the second write's condition is about the first's
    /// result).
    var keys: [String]

    /// This write alone, without the node's lease: for what must reach etcd whatever the
    /// lease (a grant to take back after no answer).
    var txn: EtcdTxn { EtcdTxn(compare: compare, success: success) }
}

/// What etcd holds under some keys, as a failed Txn read them.
struct ClusterReads: Sendable {
    var keyValues: [String: EtcdKeyValue]
    var revision: Int64

    func value(_ key: String) -> EtcdKeyValue? { keyValues[key] }

    func under(_ prefix: String) -> [EtcdKeyValue] {
        keyValues.filter { $0.key.hasPrefix(prefix) }.map(\.value)
    }
}

enum ClusterWriteOutcome: Sendable {
    /// Written, at this revision (the Txn's: every write of a batch shares it).
    case applied(revision: Int64)
    /// One of its conditions did not hold: nothing of it was written.
    case conflict(ClusterReads)
    /// This node's key is gone from etcd or on another lease: it may write nothing.
    case lapsed
    /// No answer: the Txn may have been applied all the same.
    case failed(EtcdGatewayError)
}

/// Sends a node's writes to etcd in batches, as a group commit does: while `maxInFlight`
/// Txns are on their way, what comes meanwhile waits and goes in the next Txn, at most
/// `maxWrites` writes to one. One Txn compares the node's lease and every write's
/// conditions and puts all of it, so a busy node pays one round trip, one JSON body and one
/// watch event line for many CONNECTs and DISCONNECTs, and etcd one Raft entry.
///
/// One Txn in flight by default: measured on the 3-node benchmark (Benchmarks/RESULTS.md),
/// etcd answered a few large Txns sooner than many small ones (a 19-write Txn in 22-27 ms
/// with one in flight per node; 2.5-write Txns in 25-240 ms with 16), so a claim waited less
/// for a full batch than for a crowd of small ones: 914-987 cycles/s with 1, 729-844 with 2,
/// 673 with 4, 324 with 16.
///
/// A failed compare fails the whole Txn. Its failure branch reads the node key and every
/// key compared; the writes whose conditions hold on that read go again at the head of the
/// queue, the others are answered `.conflict` with what etcd holds (their callers decide
/// anew). A write whose condition a read cannot settle fails alone in a Txn of its own.
final class ClusterWriteBatcher: Sendable {
    struct Pending: Sendable {
        var write: ClusterWrite
        var continuation: CheckedContinuation<ClusterWriteOutcome, Never>
        /// Failed with others once: goes alone next time, so that it cannot hold others back.
        var alone = false
    }

    struct Queue: Sendable {
        var waiting: [Pending] = []
        var inFlight = 0
    }

    /// etcd's default `--max-txn-ops` is 128 per branch: one batch stays below it.
    static let maxOperations = 120

    let gateway: EtcdGateway
    let nodeKey: String
    let maxInFlight: Int
    let maxWrites: Int
    /// The node's lease in force: every Txn compares the node key's lease with it.
    private let lease = Atomic<Int64>(0)
    private let queue = Mutex(Queue())

    init(gateway: EtcdGateway, nodeKey: String, maxInFlight: Int = 1, maxWrites: Int = 32) {
        self.gateway = gateway
        self.nodeKey = nodeKey
        self.maxInFlight = maxInFlight
        self.maxWrites = maxWrites
    }

    /// The lease the node key is on from now (a start, a rejoin after a lapse).
    func use(lease id: Int64) { lease.store(id, ordering: .sequentiallyConsistent) }

    /// Writes `write` in the next Txn that has room for it.
    func submit(_ write: ClusterWrite) async -> ClusterWriteOutcome {
        await withCheckedContinuation { continuation in
            let batch = queue.withLock { queue -> [Pending]? in
                queue.waiting.append(Pending(write: write, continuation: continuation))
                return Self.nextBatch(&queue, maxInFlight: maxInFlight, maxWrites: maxWrites)
            }
            if let batch { send(batch) }
        }
    }

    /// The writes of the next Txn, if one may go now: from the head of the queue, skipping
    /// those whose keys an earlier one of the batch touches.
    private static func nextBatch(_ queue: inout Queue, maxInFlight: Int, maxWrites: Int) -> [Pending]? {
        guard queue.inFlight < maxInFlight, !queue.waiting.isEmpty else { return nil }
        var batch: [Pending] = []
        var rest: [Pending] = []
        var keys = Set<String>()
        var compares = 1, operations = 0, reads = 1
        for pending in queue.waiting {
            let write = pending.write
            let fits = batch.count < maxWrites && !(pending.alone && !batch.isEmpty)
                && !(batch.first?.alone ?? false)
                && compares + write.compare.count <= maxOperations && operations + write.success.count <= maxOperations
                && reads + write.reads.count <= maxOperations && !write.keys.contains(where: keys.contains)
            if fits || batch.isEmpty {
                batch.append(pending)
                keys.formUnion(write.keys)
                compares += write.compare.count
                operations += write.success.count
                reads += write.reads.count
            } else {
                rest.append(pending)
            }
        }
        queue.waiting = rest
        queue.inFlight += 1
        return batch
    }

    private func send(_ batch: [Pending]) {
        Task {
            let retry = await self.run(batch)
            let next = self.queue.withLock { queue -> [Pending]? in
                queue.inFlight -= 1
                queue.waiting.insert(contentsOf: retry, at: 0)
                return Self.nextBatch(&queue, maxInFlight: maxInFlight, maxWrites: maxWrites)
            }
            if let next { self.send(next) }
        }
    }

    /// One Txn for `batch`; answers every write it settled and returns those to go again.
    private func run(_ batch: [Pending]) async -> [Pending] {
        let lease = self.lease.load(ordering: .sequentiallyConsistent)
        var compare = [EtcdCompare(key: nodeKey, .lease(lease))]
        var success: [EtcdOperation] = []
        var failure: [EtcdOperation] = [.range(key: nodeKey)]
        var readKeys = Set<String>()
        for pending in batch {
            compare += pending.write.compare
            success += pending.write.success
            for read in pending.write.reads {
                guard case .range(let key, let rangeEnd, _) = read, readKeys.insert(key + "\u{0}" + (rangeEnd ?? "")).inserted
                else { continue }
                failure.append(read)
            }
        }
        let result: EtcdTxnResult
        do {
            result = try await gateway.txn(EtcdTxn(compare: compare, success: success, failure: failure), successAnswers: false)
        } catch {
            for pending in batch { pending.continuation.resume(returning: .failed(error)) }
            return []
        }
        if result.succeeded {
            for pending in batch { pending.continuation.resume(returning: .applied(revision: result.revision)) }
            return []
        }
        guard let node = result.responses.first?.keyValues.first, node.lease == lease else {
            for pending in batch { pending.continuation.resume(returning: .lapsed) }
            return []
        }
        var keyValues: [String: EtcdKeyValue] = [:]
        for response in result.responses.dropFirst() {
            for kv in response.keyValues { keyValues[kv.keyString] = kv }
        }
        let reads = ClusterReads(keyValues: keyValues, revision: result.revision)
        var retry: [Pending] = []
        for pending in batch {
            if batch.count > 1, pending.write.compare.allSatisfy({ $0.holds(for: reads.value($0.key)) }) {
                // Its conditions held: another write failed this Txn.
                retry.append(pending)
            } else {
                pending.continuation.resume(returning: .conflict(reads))
            }
        }
        if retry.count == batch.count {
            // No write failed on the read (which etcd makes at the compare's revision): a
            // condition this reading cannot settle. Each goes alone, where etcd settles it.
            return retry.map { pending in
                var alone = pending
                alone.alone = true
                return alone
            }
        }
        return retry
    }
}
