/// A connection ended: record it, unless the connection no longer holds the session.
public struct ReleaseRequest: Sendable {
    public var sessionName: SessionName
    public var connection: ConnectionNumber
    public var reason: DisconnectReason
    /// A v5 DISCONNECT's Session Expiry Interval, when it carried one.
    public var newExpiryInterval: UInt32?
    public var remoteAddress: String

    public init(
        sessionName: SessionName, connection: ConnectionNumber, reason: DisconnectReason,
        newExpiryInterval: UInt32? = nil, remoteAddress: String = ""
    ) {
        self.sessionName = sessionName
        self.connection = connection
        self.reason = reason
        self.newExpiryInterval = newExpiryInterval
        self.remoteAddress = remoteAddress
    }
}
