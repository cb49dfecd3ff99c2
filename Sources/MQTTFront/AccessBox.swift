import Authorization
import Synchronization

/// The access control in force; swapped whole by a reload, read once per CONNECT.
final class AccessBox: Sendable {
    private let current: Mutex<any AccessControl>

    init(_ access: any AccessControl) {
        current = Mutex(access)
    }

    var access: any AccessControl { current.withLock { $0 } }

    func replace(with access: any AccessControl) {
        current.withLock { $0 = access }
    }
}
