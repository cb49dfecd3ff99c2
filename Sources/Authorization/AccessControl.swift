/// What a front asks about a client once per CONNECT (and again after a reload): the
/// permissions it then checks every PUBLISH and SUBSCRIBE filter against. The executable
/// supplies it, from the configuration's bindings or Mosquitto ACL and the client registry's
/// attributes; without one, everything is allowed.
public protocol AccessControl: Sendable {
    var mode: AuthorizationMode { get }
    func permissions(authenticationName: String, sessionName: String) -> ClientPermissions
    /// As above, for a client whose sign-in (a token's claims, the webhook's answer) gave it
    /// `attributes`: they override the registry's attributes of the same key.
    func permissions(
        authenticationName: String, sessionName: String, attributes: [String: AttributeValue]
    ) -> ClientPermissions
}

extension AccessControl {
    public func permissions(
        authenticationName: String, sessionName: String, attributes: [String: AttributeValue]
    ) -> ClientPermissions {
        permissions(authenticationName: authenticationName, sessionName: sessionName)
    }
}

/// `authorization: open`: every client may publish and subscribe anywhere.
public struct OpenAccess: AccessControl {
    public init() {}
    public var mode: AuthorizationMode { .open }
    public func permissions(authenticationName: String, sessionName: String) -> ClientPermissions { .open }
}
