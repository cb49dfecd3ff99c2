import LMDBStorage
import Foundation
import SessionLedger
import Synchronization

/// The check every record must pass before anything the tool prints relies on it: the
/// library's decoder (record format), the number it carries (density), and its link in
/// the hash chain. The same rules and wording as the library's `replay`.
enum RecordCheck {
    enum Outcome {
        case intact(LedgerHead)
        case damaged(VerifyProblem)
    }

    static func check(_ key: UInt64, _ bytes: UnsafeRawBufferPointer, previous: ChainHash) -> Outcome {
        if CheckpointRecordFormat.isCheckpoint(bytes) {
            if let problem = LogRecordCheck.problem(bytes, sequence: key) {
                return .damaged(.unreadableRecord(sequence: key, detail: problem))
            }
            let stored = EventRecordFormat.storedHash(bytes)
            guard EventRecordFormat.chainHash(of: bytes, previous: previous) == stored else {
                return .damaged(.hashMismatch(sequence: key))
            }
            let timestamp = Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 24, as: Int64.self))
            return .intact(LedgerHead(sequence: key, timestamp: timestamp, hash: stored))
        }
        // `EventRecordFormat.decode` is `header` plus UTF-8 names; this is the same check
        // without building the strings.
        let header: EventRecordFormat.Header
        do {
            header = try EventRecordFormat.header(bytes)
        } catch {
            return .damaged(.unreadableRecord(sequence: key, detail: "\(error)"))
        }
        guard isUTF8(bytes, header.authenticationNameRange), isUTF8(bytes, header.sessionNameRange),
              isUTF8(bytes, header.remoteAddressRange)
        else {
            return .damaged(.unreadableRecord(sequence: key, detail: "\(RecordFormatError.invalidUTF8)"))
        }
        guard header.sequence == key else {
            return .damaged(.unreadableRecord(sequence: key, detail: "stored under \(key) but numbered \(header.sequence)"))
        }
        let stored = EventRecordFormat.storedHash(bytes)
        guard EventRecordFormat.chainHash(of: bytes, previous: previous) == stored else {
            return .damaged(.hashMismatch(sequence: key))
        }
        return .intact(LedgerHead(sequence: key, timestamp: header.timestamp, hash: stored))
    }

    @inline(__always)
    static func isUTF8(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        let text = UnsafeRawBufferPointer(rebasing: bytes[range])
        var ascii = true
        for byte in text where byte >= 0x80 {
            ascii = false
            break
        }
        return ascii || String(validating: text, as: UTF8.self) != nil
    }
}

/// Checks records (`RecordCheck`) on a second thread, in order, while the scanning thread
/// folds them: the chain is inherently sequential, but it does not depend on the fold.
/// The records stay in LMDB's map; the read transaction outlives `finish()`.
final class ChainValidator: @unchecked Sendable {
    struct Reference {
        var sequence: UInt64
        var base: UnsafeRawPointer?
        var count: Int
    }

    private let condition = NSCondition()
    private var pending: [[Reference]] = []
    private var inputEnded = false
    private var finished = false
    private var head: LedgerHead
    private var problem: VerifyProblem?
    private let failed = Atomic<Bool>(false)

    init(after head: LedgerHead) { self.head = head }

    /// True once a record failed; the scanner may stop early, as every later problem is later.
    var hasFailed: Bool { failed.load(ordering: .relaxed) }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "audit-chain"
        thread.start()
    }

    func submit(_ batch: [Reference]) {
        guard !batch.isEmpty else { return }
        condition.lock()
        pending.append(batch)
        condition.signal()
        condition.unlock()
    }

    /// Waits until every submitted record is checked: the last intact head, and the first problem.
    func finish() -> (LedgerHead, VerifyProblem?) {
        condition.lock()
        inputEnded = true
        condition.broadcast()
        while !finished { condition.wait() }
        let result = (head, problem)
        condition.unlock()
        return result
    }

    private func run() {
        var last = head
        var found: VerifyProblem?
        while true {
            condition.lock()
            while pending.isEmpty && !inputEnded { condition.wait() }
            if pending.isEmpty {
                head = last
                problem = found
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            let batches = pending
            pending.removeAll(keepingCapacity: true)
            condition.unlock()
            guard found == nil else { continue }
            outer: for batch in batches {
                for reference in batch {
                    let bytes = UnsafeRawBufferPointer(start: reference.base, count: reference.count)
                    switch RecordCheck.check(reference.sequence, bytes, previous: last.hash) {
                    case .intact(let next):
                        last = next
                    case .damaged(let problem):
                        found = problem
                        failed.store(true, ordering: .relaxed)
                        break outer
                    }
                }
            }
        }
    }
}

/// What a whole-log scan found: the last intact record, and the first problem if any.
struct ScanOutcome {
    var head: LedgerHead
    var problem: VerifyProblem?
}

enum LogScan {
    static let batchSize = 4096

    /// Walks the whole log from its first record. Every record is checked (`RecordCheck`,
    /// on a second thread) and must be numbered densely from 1; `body` sees each record
    /// here, before its check has finished, so callers act on what they collected only
    /// when the outcome has no problem. Stops at the first gap or unreadable layout.
    /// With the archive's segments first (`ArchivedLog`): they stay loaded (`keptSegments`),
    /// as the records the body saw point into them.
    static func run(
        _ snapshot: LedgerSnapshot, archive: String?, checkpoint: ((RawRecord) throws -> Void)? = nil,
        _ body: (RawRecord) throws -> Void
    ) throws -> ScanOutcome {
        let validator = ChainValidator(after: .empty)
        validator.start()
        var batch: [ChainValidator.Reference] = []
        batch.reserveCapacity(batchSize)
        var expected: UInt64 = 1
        var problem: VerifyProblem?
        var archiveProblem: VerifyProblem?
        do {
            // From 0, so that a record stored under 0 is found rather than skipped.
            archiveProblem = try ArchivedLog.walk(snapshot, archive: archive, from: 0, keep: keptSegments.keep) { key, bytes in
                guard key == expected else {
                    problem = .sequenceGap(expected: expected, found: key)
                    return false
                }
                batch.append(ChainValidator.Reference(sequence: key, base: bytes.baseAddress, count: bytes.count))
                if batch.count == batchSize {
                    validator.submit(batch)
                    batch.removeAll(keepingCapacity: true)
                    if validator.hasFailed { return false }
                }
                guard let raw = RawRecord(bytes) else {
                    // The check of this record reports exactly what is wrong with it.
                    problem = .unreadableRecord(sequence: key, detail: "its field lengths do not match its size")
                    return false
                }
                // Checkpoints are records of the chain but no event: they go to their own observer.
                if raw.isCheckpoint { try checkpoint?(raw) } else { try body(raw) }
                expected += 1
                return true
            }
        } catch {
            validator.submit(batch)
            _ = validator.finish()
            throw error
        }
        validator.submit(batch)
        let (head, checkProblem) = validator.finish()
        return ScanOutcome(head: head, problem: archiveProblem ?? checkProblem ?? problem)
    }
}
