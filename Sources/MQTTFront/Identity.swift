import CustodyConfig
import SessionLedger
import Synchronization

/// Who a CONNECT is (DESIGN.md R7): asked for every CONNECT with its Username, password,
/// ClientID and TLS client certificate. The executable supplies it (CustodyConfig's
/// `Authenticator`); without one every Username is believed. It can be replaced while
/// running (`MQTTFront.replaceAuthority`), e.g. when the client registry is reloaded.
public protocol IdentityAuthority: Sendable {
    func decide(_ credentials: ConnectCredentials) -> IdentityDecision
}

extension Authenticator: IdentityAuthority {}

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
