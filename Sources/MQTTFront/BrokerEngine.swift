import Broker
import MQTTCodec
import SessionLedger

extension ConnectionSink: BrokerSink {}

extension BrokerError: PubSubFailure {}

/// `handle(_:) async throws(BrokerError)` is the witness.
extension BrokerSession: PubSubSession {}

extension Broker: PubSubEngine {
    public func attachSession(
        name: SessionName, persistent: Bool, sessionPresent: Bool, protocolVersion: MQTTProtocolVersion,
        receiveMaximum: Int, maximumPacketSize: Int?, sink: ConnectionSink
    ) -> any PubSubSession {
        attach(
            session: name, persistent: persistent, sessionPresent: sessionPresent, protocolVersion: protocolVersion,
            receiveMaximum: receiveMaximum, maximumPacketSize: maximumPacketSize, sink: sink)
    }

    public func detachSession(_ session: any PubSubSession) {
        guard let session = session as? BrokerSession else { return }
        detach(session)
    }

    /// Retained messages and shared subscriptions are not implemented; QoS 2, wildcards,
    /// subscription identifiers are (their absence from the CONNACK means "available").
    public var capabilities: MQTTProperties {
        [.retainAvailable(false), .sharedSubscriptionAvailable(false)]
    }
}
