import Foundation

// The messages of etcd's v3 JSON gateway (grpc-gateway over etcdserverpb): keys and values
// are base64 (Foundation's `Data` coding), 64-bit integers travel as strings, and fields at
// their default value are left out (a failed Txn has no `succeeded`, a PUT event no `type`).

/// An Int64 that the gateway writes as a JSON string ("42"); reads a number as well.
public struct EtcdInt: Codable, Sendable, Equatable, ExpressibleByIntegerLiteral {
    public var value: Int64
    public init(_ value: Int64) { self.value = value }
    public init(integerLiteral value: Int64) { self.value = value }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self), let value = Int64(text) {
            self.value = value
        } else {
            value = try container.decode(Int64.self)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(String(value))
    }
}

/// One key with its value and revisions, as a range or a watch event gives it.
public struct EtcdKeyValue: Codable, Sendable, Equatable {
    public var key: Data
    public var value: Data
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public var keyString: String { String(decoding: key, as: UTF8.self) }

    enum CodingKeys: String, CodingKey {
        case key, value, version, lease
        case createRevision = "create_revision"
        case modRevision = "mod_revision"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decodeIfPresent(Data.self, forKey: .key) ?? Data()
        value = try c.decodeIfPresent(Data.self, forKey: .value) ?? Data()
        createRevision = try c.decodeIfPresent(EtcdInt.self, forKey: .createRevision)?.value ?? 0
        modRevision = try c.decodeIfPresent(EtcdInt.self, forKey: .modRevision)?.value ?? 0
        version = try c.decodeIfPresent(EtcdInt.self, forKey: .version)?.value ?? 0
        lease = try c.decodeIfPresent(EtcdInt.self, forKey: .lease)?.value ?? 0
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(key, forKey: .key)
        try c.encode(value, forKey: .value)
        try c.encode(EtcdInt(createRevision), forKey: .createRevision)
        try c.encode(EtcdInt(modRevision), forKey: .modRevision)
        try c.encode(EtcdInt(version), forKey: .version)
        try c.encode(EtcdInt(lease), forKey: .lease)
    }
}

/// A condition of a Txn on one key.
public struct EtcdCompare: Encodable, Sendable {
    public enum Target: Sendable {
        /// The revision that created the key; 0 when it does not exist.
        case createRevision(Int64)
        /// The revision of its last change; 0 when it does not exist.
        case modRevision(Int64)
        case version(Int64)
        case value(Data)
        case lease(Int64)
    }

    public enum Result: String, Sendable {
        case equal = "EQUAL", greater = "GREATER", less = "LESS", notEqual = "NOT_EQUAL"
    }

    public var key: String
    public var target: Target
    public var result: Result

    public init(key: String, _ target: Target, _ result: Result = .equal) {
        self.key = key
        self.target = target
        self.result = result
    }

    /// The key does not exist.
    public static func absent(_ key: String) -> EtcdCompare { EtcdCompare(key: key, .createRevision(0)) }

    /// Whether the comparison holds for the key as `keyValue` shows it (nil: absent), as etcd
    /// decides it: an absent key has every revision, version and lease 0, and no value (a
    /// comparison of its value fails).
    public func holds(for keyValue: EtcdKeyValue?) -> Bool {
        let order: Int
        switch target {
        case .createRevision(let revision): order = Self.order(keyValue?.createRevision ?? 0, revision)
        case .modRevision(let revision): order = Self.order(keyValue?.modRevision ?? 0, revision)
        case .version(let version): order = Self.order(keyValue?.version ?? 0, version)
        case .lease(let lease): order = Self.order(keyValue?.lease ?? 0, lease)
        case .value(let value):
            guard let keyValue else { return false }
            order = keyValue.value.lexicographicallyPrecedes(value) ? -1 : (keyValue.value == value ? 0 : 1)
        }
        switch result {
        case .equal: return order == 0
        case .notEqual: return order != 0
        case .greater: return order > 0
        case .less: return order < 0
        }
    }

    private static func order(_ actual: Int64, _ expected: Int64) -> Int {
        actual < expected ? -1 : (actual == expected ? 0 : 1)
    }

    enum CodingKeys: String, CodingKey {
        case key, target, result, value, version, lease
        case createRevision = "create_revision"
        case modRevision = "mod_revision"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(Data(key.utf8), forKey: .key)
        try c.encode(result.rawValue, forKey: .result)
        switch target {
        case .createRevision(let revision):
            try c.encode("CREATE", forKey: .target)
            try c.encode(EtcdInt(revision), forKey: .createRevision)
        case .modRevision(let revision):
            try c.encode("MOD", forKey: .target)
            try c.encode(EtcdInt(revision), forKey: .modRevision)
        case .version(let version):
            try c.encode("VERSION", forKey: .target)
            try c.encode(EtcdInt(version), forKey: .version)
        case .value(let value):
            try c.encode("VALUE", forKey: .target)
            try c.encode(value, forKey: .value)
        case .lease(let lease):
            try c.encode("LEASE", forKey: .target)
            try c.encode(EtcdInt(lease), forKey: .lease)
        }
    }
}

/// One operation of a Txn branch.
public enum EtcdOperation: Encodable, Sendable {
    /// `rangeEnd`: nil for one key; `prefixEnd(of:)` for every key under a prefix.
    case range(key: String, rangeEnd: String? = nil, limit: Int64 = 0)
    case put(key: String, value: Data, lease: Int64 = 0)
    case delete(key: String, rangeEnd: String? = nil)

    enum CodingKeys: String, CodingKey {
        case range = "request_range", put = "request_put", delete = "request_delete_range"
    }

    enum FieldKeys: String, CodingKey {
        case key, value, lease, limit
        case rangeEnd = "range_end"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .range(let key, let rangeEnd, let limit):
            var f = c.nestedContainer(keyedBy: FieldKeys.self, forKey: .range)
            try f.encode(Data(key.utf8), forKey: .key)
            if let rangeEnd { try f.encode(Data(rangeEnd.utf8), forKey: .rangeEnd) }
            if limit > 0 { try f.encode(EtcdInt(limit), forKey: .limit) }
        case .put(let key, let value, let lease):
            var f = c.nestedContainer(keyedBy: FieldKeys.self, forKey: .put)
            try f.encode(Data(key.utf8), forKey: .key)
            try f.encode(value, forKey: .value)
            if lease != 0 { try f.encode(EtcdInt(lease), forKey: .lease) }
        case .delete(let key, let rangeEnd):
            var f = c.nestedContainer(keyedBy: FieldKeys.self, forKey: .delete)
            try f.encode(Data(key.utf8), forKey: .key)
            if let rangeEnd { try f.encode(Data(rangeEnd.utf8), forKey: .rangeEnd) }
        }
    }
}

/// The key just after every key that starts with `prefix` (etcd's range_end for a prefix).
public func prefixEnd(of prefix: String) -> String {
    var bytes = Array(prefix.utf8)
    while let last = bytes.last {
        if last < 0xFF {
            bytes[bytes.count - 1] = last + 1
            return String(decoding: bytes, as: UTF8.self)
        }
        bytes.removeLast()
    }
    return "\0"
}

/// A compare-then-act transaction: `success` runs when every comparison holds, else `failure`.
public struct EtcdTxn: Encodable, Sendable {
    public var compare: [EtcdCompare]
    public var success: [EtcdOperation]
    public var failure: [EtcdOperation]

    public init(compare: [EtcdCompare] = [], success: [EtcdOperation] = [], failure: [EtcdOperation] = []) {
        self.compare = compare
        self.success = success
        self.failure = failure
    }
}

struct EtcdHeader: Decodable {
    var revision: EtcdInt?
    var memberID: String?
    var raftTerm: EtcdInt?
    enum CodingKeys: String, CodingKey {
        case revision
        case memberID = "member_id"
        case raftTerm = "raft_term"
    }
}

/// The answer of one operation of a Txn branch, in order.
public enum EtcdOperationResult: Decodable, Sendable {
    case range([EtcdKeyValue], count: Int64)
    case put
    case delete(deleted: Int64)

    enum CodingKeys: String, CodingKey {
        case range = "response_range", put = "response_put", delete = "response_delete_range"
    }

    struct RangeBody: Decodable {
        var kvs: [EtcdKeyValue]?
        var count: EtcdInt?
    }

    struct DeleteBody: Decodable { var deleted: EtcdInt? }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let range = try c.decodeIfPresent(RangeBody.self, forKey: .range) {
            self = .range(range.kvs ?? [], count: range.count?.value ?? 0)
        } else if let delete = try c.decodeIfPresent(DeleteBody.self, forKey: .delete) {
            self = .delete(deleted: delete.deleted?.value ?? 0)
        } else {
            self = .put
        }
    }

    /// The key-values of a range answer; empty for the others.
    public var keyValues: [EtcdKeyValue] {
        if case .range(let kvs, _) = self { return kvs }
        return []
    }
}

/// What a Txn did: which branch ran, at which revision of the store, and its answers.
public struct EtcdTxnResult: Decodable, Sendable {
    /// Every comparison held and `success` ran.
    public var succeeded: Bool
    /// The store's revision after the Txn: the revision of its writes when it wrote.
    public var revision: Int64
    public var responses: [EtcdOperationResult]

    enum CodingKeys: String, CodingKey { case header, succeeded, responses }

    /// A decoder's `userInfo` key: true leaves a successful Txn's `responses` undecoded.
    static let skipSuccessAnswers = CodingUserInfoKey(rawValue: "custody.etcd.skipSuccessAnswers")!

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        succeeded = try c.decodeIfPresent(Bool.self, forKey: .succeeded) ?? false
        revision = try c.decodeIfPresent(EtcdHeader.self, forKey: .header)?.revision?.value ?? 0
        if succeeded, decoder.userInfo[Self.skipSuccessAnswers] as? Bool == true {
            responses = []
        } else {
            responses = try c.decodeIfPresent([EtcdOperationResult].self, forKey: .responses) ?? []
        }
    }
}

/// A lease: its id and the time to live etcd granted (or has left: 0 or less once it lapsed).
public struct EtcdLease: Sendable, Equatable {
    public var id: Int64
    public var ttl: Int64
}

struct LeaseBody: Decodable {
    var ID: EtcdInt?
    var TTL: EtcdInt?
    var error: String?
}

struct KeepAliveBody: Decodable {
    var result: LeaseBody?
}

/// One change a watch reports.
public struct EtcdWatchEvent: Sendable {
    public enum Kind: Sendable { case put, delete }
    public var kind: Kind
    public var keyValue: EtcdKeyValue
    /// The key as it was before, when the watch asked for it.
    public var previous: EtcdKeyValue?
}

struct WatchLine: Decodable {
    struct Result: Decodable {
        struct Event: Decodable {
            var type: String?
            var kv: EtcdKeyValue?
            var prevKV: EtcdKeyValue?
            enum CodingKeys: String, CodingKey {
                case type, kv
                case prevKV = "prev_kv"
            }
        }
        var header: EtcdHeader?
        var created: Bool?
        var canceled: Bool?
        var compactRevision: EtcdInt?
        var cancelReason: String?
        var events: [Event]?
        enum CodingKeys: String, CodingKey {
            case header, created, canceled, events
            case compactRevision = "compact_revision"
            case cancelReason = "cancel_reason"
        }
    }
    var result: Result?
    var error: GatewayErrorBody?
}

struct GatewayErrorBody: Decodable {
    var error: String?
    var message: String?
    var code: Int?
}
