/// A failure of the store. LMDB's own errors keep their code and message; the writer
/// passes them to every caller whose claim was in the failed commit (rule R8).
public enum LedgerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An LMDB call failed. `code` is LMDB's or errno's.
    case storage(operation: String, code: Int32, message: String)
    /// The directory holds no Custody ledger (no LMDB environment, or not ours).
    case notALedger(path: String, detail: String)
    /// The ledger was written by a newer Custody with a format this one does not know.
    case unsupportedFormat(found: UInt8, supported: UInt8)
    /// A stored record or projection value cannot be decoded.
    case corruptRecord(table: String, detail: String)
    /// The ledger was closed before the request could be served.
    case closed

    /// The code of a store that has no room left (LMDB's MDB_MAP_FULL; a test in
    /// LMDBStorageTests keeps the two equal). Other stores report it with the same code.
    public static let mapFullCode: Int32 = -30_792

    public var isMapFull: Bool {
        if case .storage(_, let code, _) = self { return code == Self.mapFullCode }
        return false
    }

    public var description: String {
        switch self {
        case .storage(let operation, let code, let message):
            if code == Self.mapFullCode {
                return "ledger storage is full (\(operation): \(message)); raise the map size or free disk space"
            }
            return "ledger storage failed in \(operation): \(message) (code \(code))"
        case .notALedger(let path, let detail):
            return "\(path) is not a Custody ledger: \(detail)"
        case .unsupportedFormat(let found, let supported):
            return "ledger format \(found) is newer than this program understands (\(supported))"
        case .corruptRecord(let table, let detail):
            return "corrupt value in the \(table) table: \(detail)"
        case .closed:
            return "the ledger is closed"
        }
    }
}
