import MQTTCodec

/// Where a session's outbound packets go: the front writes them to the session's current connection.
///
/// The broker calls `send` outside its lock, from whichever thread made the decision (a
/// publisher's, or the store's writer thread once a message is durable), one call at a time
/// per session and in the order the broker decided the packets (packet identifiers, per-topic
/// order). `send` should only hand the packets over (a channel write, an event loop
/// `execute`); it may call back into the broker (e.g. `detach` when the write fails).
public protocol BrokerSink: AnyObject, Sendable {
    func send(_ packets: [MQTTPacket])   // called from any thread; must not block long
}
