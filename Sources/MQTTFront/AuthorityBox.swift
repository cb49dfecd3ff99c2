import CustodyModel
import Synchronization

/// The authority in force; swapped whole, read once per CONNECT.
final class AuthorityBox: Sendable {
    private let current: Mutex<(any IdentityAuthority)?>

    init(_ authority: (any IdentityAuthority)?) {
        current = Mutex(authority)
    }

    var authority: (any IdentityAuthority)? { current.withLock { $0 } }

    func replace(with authority: any IdentityAuthority) {
        current.withLock { $0 = authority }
    }
}
