import Foundation
import NIOCore

// The JSON body of a Txn, written directly: its shape is fixed, its strings are base64 and
// its numbers are decimal digits, so nothing in it needs escaping. A busy cluster node sends
// one per batch of claims and releases; JSONEncoder's generic path cost more than the
// request itself.

extension EtcdTxn {
    /// The body `/v3/kv/txn` takes (the same JSON that `Encodable` writes).
    public func jsonBody(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var out = allocator.buffer(capacity: 128 + 96 * (compare.count + success.count + failure.count))
        out.writeStaticString("{\"compare\":[")
        for (index, condition) in compare.enumerated() {
            if index > 0 { out.writeStaticString(",") }
            condition.write(to: &out)
        }
        out.writeStaticString("],\"success\":[")
        Self.write(success, to: &out)
        out.writeStaticString("],\"failure\":[")
        Self.write(failure, to: &out)
        out.writeStaticString("]}")
        return out
    }

    private static func write(_ operations: [EtcdOperation], to out: inout ByteBuffer) {
        for (index, operation) in operations.enumerated() {
            if index > 0 { out.writeStaticString(",") }
            operation.write(to: &out)
        }
    }
}

extension EtcdCompare {
    func write(to out: inout ByteBuffer) {
        out.writeStaticString("{\"key\":")
        out.writeBase64(Data(key.utf8))
        out.writeStaticString(",\"result\":\"")
        out.writeString(result.rawValue)
        let name: StaticString, field: StaticString
        var number: Int64 = 0
        var bytes: Data?
        switch target {
        case .createRevision(let revision): (name, field, number) = ("CREATE", "create_revision", revision)
        case .modRevision(let revision): (name, field, number) = ("MOD", "mod_revision", revision)
        case .version(let version): (name, field, number) = ("VERSION", "version", version)
        case .lease(let lease): (name, field, number) = ("LEASE", "lease", lease)
        case .value(let value): (name, field, bytes) = ("VALUE", "value", value)
        }
        out.writeStaticString("\",\"target\":\"")
        out.writeStaticString(name)
        out.writeStaticString("\",\"")
        out.writeStaticString(field)
        out.writeStaticString("\":")
        if let bytes { out.writeBase64(bytes) } else { out.writeQuoted(number) }
        out.writeStaticString("}")
    }
}

extension EtcdOperation {
    func write(to out: inout ByteBuffer) {
        switch self {
        case .range(let key, let rangeEnd, let limit):
            out.writeStaticString("{\"request_range\":{\"key\":")
            out.writeBase64(Data(key.utf8))
            if let rangeEnd {
                out.writeStaticString(",\"range_end\":")
                out.writeBase64(Data(rangeEnd.utf8))
            }
            if limit > 0 {
                out.writeStaticString(",\"limit\":")
                out.writeQuoted(limit)
            }
        case .put(let key, let value, let lease):
            out.writeStaticString("{\"request_put\":{\"key\":")
            out.writeBase64(Data(key.utf8))
            out.writeStaticString(",\"value\":")
            out.writeBase64(value)
            if lease != 0 {
                out.writeStaticString(",\"lease\":")
                out.writeQuoted(lease)
            }
        case .delete(let key, let rangeEnd):
            out.writeStaticString("{\"request_delete_range\":{\"key\":")
            out.writeBase64(Data(key.utf8))
            if let rangeEnd {
                out.writeStaticString(",\"range_end\":")
                out.writeBase64(Data(rangeEnd.utf8))
            }
        }
        out.writeStaticString("}}")
    }
}

extension ByteBuffer {
    /// `"<base64>"`.
    fileprivate mutating func writeBase64(_ bytes: Data) {
        writeStaticString("\"")
        writeString(bytes.base64EncodedString())
        writeStaticString("\"")
    }

    /// A 64-bit integer as the gateway writes them: a JSON string of its digits.
    fileprivate mutating func writeQuoted(_ value: Int64) {
        writeStaticString("\"")
        writeString(String(value))
        writeStaticString("\"")
    }
}
