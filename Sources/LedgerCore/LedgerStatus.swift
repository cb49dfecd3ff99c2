#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The end of the log: last sequence number, its timestamp and its chain hash.
public struct LedgerHead: Sendable, Equatable {
    public var sequence: UInt64
    public var timestamp: Int64
    public var hash: ChainHash

    public static let empty = LedgerHead(sequence: 0, timestamp: 0, hash: .genesis)

    public init(sequence: UInt64, timestamp: Int64, hash: ChainHash) {
        self.sequence = sequence
        self.timestamp = timestamp
        self.hash = hash
    }
}

/// What opening the ledger found and fixed.
public struct RecoveryReport: Sendable, Equatable {
    /// Sessions found connected, now `disconnected(brokerRestart)`.
    public var disconnected: [LedgerEvent]
    /// Sessions whose deadline passed while the broker was down, now `expired`.
    public var expired: [LedgerEvent]
    public var head: LedgerHead
    /// Every event recovery recorded, with its hash, in sequence order.
    public var events: [CommittedEvent] = []
    /// Where recovery's check of the log began (the newest checkpoint, or the last records
    /// when there is none) and how many records it read and chained to the head.
    public var checkedFrom: UInt64 = 0
    public var checkedRecords = 0

    public init(disconnected: [LedgerEvent], expired: [LedgerEvent], head: LedgerHead, events: [CommittedEvent] = []) {
        self.disconnected = disconnected
        self.expired = expired
        self.head = head
        self.events = events
    }
}

/// One group commit, as the writer saw it.
public struct CommitStatistics: Sendable {
    /// Requests answered by this commit.
    public var requests: Int
    /// Events appended.
    public var events: Int
    /// From taking the batch to the end of the commit.
    public var microseconds: Int64
    /// Of that, the store's own commit: writing pages and fsync.
    public var syncMicroseconds: Int64

    public init(requests: Int, events: Int, microseconds: Int64, syncMicroseconds: Int64) {
        self.requests = requests
        self.events = events
        self.microseconds = microseconds
        self.syncMicroseconds = syncMicroseconds
    }
}

/// An event as committed: stamped, with the chain hash of its record.
public struct CommittedEvent: Sendable, Equatable {
    public var event: LedgerEvent
    public var hash: ChainHash

    public init(event: LedgerEvent, hash: ChainHash) {
        self.event = event
        self.hash = hash
    }
}

/// How many sessions the projection holds: live ones (connected, or disconnected and not
/// yet expired), and of those the connected ones.
public struct SessionCounts: Sendable, Equatable {
    public var live: Int
    public var connected: Int
    public var disconnected: Int { live - connected }

    public init(live: Int, connected: Int) {
        self.live = live
        self.connected = connected
    }
}

/// Microseconds since the Unix epoch.
public typealias LedgerClock = @Sendable () -> Int64

public func wallClockMicroseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1_000
}

/// How much room the ledger takes, for metrics and warnings.
public struct LedgerStorageFigures: Sendable, Equatable {
    /// Bytes in use in the live LMDB map (log and projection).
    public var liveBytes: Int
    /// Bytes of the archive's segment files.
    public var archiveBytes: Int
    /// The live map's used bytes over its maximum.
    public var mapUsedRatio: Double
    /// Whether CONNECTs are refused because only the reserve is left.
    public var inReserve: Bool
    /// The oldest live record's time (µs), nil when the live log is empty.
    public var oldestLiveEvent: Int64?
    public var archiveSegments: Int

    public init(liveBytes: Int, archiveBytes: Int, mapUsedRatio: Double, inReserve: Bool, oldestLiveEvent: Int64?, archiveSegments: Int) {
        self.liveBytes = liveBytes
        self.archiveBytes = archiveBytes
        self.mapUsedRatio = mapUsedRatio
        self.inReserve = inReserve
        self.oldestLiveEvent = oldestLiveEvent
        self.archiveSegments = archiveSegments
    }
}
