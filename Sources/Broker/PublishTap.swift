import LMDBStorage
import MQTTCodec

/// Who published a message, for whoever taps the broker's publishes (routes): set by the
/// front once a session is attached (`BrokerSession.describePublisher`), or given by a
/// publisher without a session (HTTP publish).
public struct PublisherFacts: Sendable, Equatable {
    public var authenticationName: String
    public var sessionName: String
    /// The attributes sign-in gave (a token's claims, the webhook's answer), as text.
    public var signInAttributes: [String: String]

    public init(authenticationName: String, sessionName: String, signInAttributes: [String: String] = [:]) {
        self.authenticationName = authenticationName
        self.sessionName = sessionName
        self.signInAttributes = signInAttributes
    }
}

/// What a tap adds to the store write of one accepted PUBLISH, and hears of its commit.
public struct TapCapture: Sendable {
    /// Written in the same transaction as the broker's own records of the message.
    public var operations: [BrokerStoreOperation]
    /// After the commit, on the store's thread, in commit order: true when durable.
    public var committed: @Sendable (Bool) -> Void

    public init(operations: [BrokerStoreOperation], committed: @escaping @Sendable (Bool) -> Void) {
        self.operations = operations
        self.committed = committed
    }
}

/// Sees every PUBLISH the broker accepts from a client (an MQTT session, or HTTP publish), in
/// the broker's order, under its lock: it must be quick and must not call the broker. What it
/// returns joins the message's store write, so that a PUBACK (or HTTP 204) is sent only once
/// the tap's records are durable too. The server's own publishes are not shown to it.
public protocol BrokerPublishTap: AnyObject, Sendable {
    func capture(_ publish: MQTTPublish, from publisher: PublisherFacts?) -> TapCapture?
}
