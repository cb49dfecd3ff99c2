import Authorization
import Broker
import MQTTCodec
import MQTTFront
import SessionLedger

extension BrokerError: PubSubFailure {}

/// `handle(_:) async throws(BrokerError)` is the witness of the async form; the other form
/// answers a PUBLISH that makes nothing durable first, and acknowledgements, on the
/// connection's own thread, and lets a PUBLISH whose records are being committed be
/// followed by the next packet at once.
extension BrokerSession: PubSubSession {
    public func handle(
        _ packet: MQTTPacket, answerLater: @escaping @Sendable (Result<[MQTTPacket], any Error>) -> Void
    ) throws -> PubSubAnswer {
        switch try handleAtOnce(packet, later: { result in answerLater(result.mapError { $0 }) }) {
        case .answered(let answers): .now(answers)
        case .decided: .decided
        case .pending: .pending
        }
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

    public func describePublisher(
        _ session: any PubSubSession, authenticationName: String, sessionName: String,
        signInAttributes: [String: AttributeValue]
    ) {
        // Without routes nobody asks who published: nothing kept, nothing locked.
        guard hasPublishTap, let session = session as? BrokerSession else { return }
        session.describePublisher(PublisherFacts(
            authenticationName: authenticationName, sessionName: sessionName,
            signInAttributes: signInAttributes.mapValues(\.text)))
    }

    public func detachSession(_ session: any PubSubSession, publishWill: Bool) {
        guard let session = session as? BrokerSession else { return }
        detach(session, publishWill: publishWill)
    }

    /// QoS 2, retained messages, wildcards, subscription identifiers and shared subscriptions
    /// are all implemented: their absence from the CONNACK means "available".
    public var capabilities: MQTTProperties { [] }
}
