import Broker
import MQTTCodec
import MQTTFront
import SessionLedger

extension BrokerError: PubSubFailure {}

/// `handle(_:) async throws(BrokerError)` is the witness of the async form; the other form
/// answers a PUBLISH that makes nothing durable first, and acknowledgements, on the
/// connection's own thread.
extension BrokerSession: PubSubSession {
    public func handle(
        _ packet: MQTTPacket, answerLater: @escaping @Sendable (Result<[MQTTPacket], any Error>) -> Void
    ) throws -> [MQTTPacket]? {
        try handleAtOnce(packet) { result in answerLater(result.mapError { $0 }) }
    }
}

extension Broker: PubSubEngine {
    public func attachSession(
        name: SessionName, persistent: Bool, sessionPresent: Bool, protocolVersion: MQTTProtocolVersion,
        receiveMaximum: Int, maximumPacketSize: Int?, will: MQTTWill?, expiryInterval: UInt32,
        readsServerTopics: Bool, sink: any ConnectionSink
    ) -> any PubSubSession {
        let session = attach(
            session: name, persistent: persistent, sessionPresent: sessionPresent, protocolVersion: protocolVersion,
            receiveMaximum: receiveMaximum, maximumPacketSize: maximumPacketSize, sink: sink)
        if let will { session.setWill(will, sessionExpiryInterval: expiryInterval) }
        if readsServerTopics { session.allowServerTopics(true) }
        return session
    }

    public func detachSession(_ session: any PubSubSession, publishWill: Bool) {
        guard let session = session as? BrokerSession else { return }
        detach(session, publishWill: publishWill)
    }

    /// QoS 2, retained messages, wildcards, subscription identifiers and shared subscriptions
    /// are all implemented: their absence from the CONNACK means "available".
    public var capabilities: MQTTProperties { [] }
}
