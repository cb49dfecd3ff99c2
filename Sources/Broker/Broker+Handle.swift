// The entry point for packets from a client, and the check that the connection still owns its session.
import MQTTCodec

extension Broker {
    func handle(_ packet: MQTTPacket, from session: BrokerSession) async throws(BrokerError) -> [MQTTPacket] {
        switch packet {
        case .publish(let publish):
            return try await handlePublish(publish, from: session)
        case .pubrel(let response):
            return try await handlePubrel(response.packetIdentifier, from: session)
        case .puback(let response):
            return try acknowledge(response, .awaitingAck, from: session)
        case .pubrec(let response):
            return try acknowledge(response, .awaitingRec, from: session)
        case .pubcomp(let response):
            return try acknowledge(response, .awaitingComp, from: session)
        case .subscribe(let subscribe):
            return try await handleSubscribe(subscribe, from: session)
        case .unsubscribe(let unsubscribe):
            return try await handleUnsubscribe(unsubscribe, from: session)
        default:
            throw BrokerError(.protocolError, "\(packet.type) is not for the broker")
        }
    }

    /// `handle` without a hop where none is needed: PUBLISH that makes nothing durable first and
    /// the acknowledgements of deliveries are answered at once; a PUBLISH whose records must be
    /// committed is decided at once and answered through `later` once they are; PUBREL,
    /// SUBSCRIBE and UNSUBSCRIBE are decided and answered through `later`, from a task.
    func handleAtOnce(
        _ packet: MQTTPacket, from session: BrokerSession,
        later: @escaping @Sendable (Result<[MQTTPacket], BrokerError>) -> Void
    ) throws(BrokerError) -> AtOnce {
        switch packet {
        case .publish(let publish):
            return try handlePublishAtOnce(publish, from: session, later: later)
        case .puback(let response):
            return .answered(try acknowledge(response, .awaitingAck, from: session))
        case .pubrec(let response):
            return .answered(try acknowledge(response, .awaitingRec, from: session))
        case .pubcomp(let response):
            return .answered(try acknowledge(response, .awaitingComp, from: session))
        default:
            Task {
                do throws(BrokerError) {
                    later(.success(try await handle(packet, from: session)))
                } catch {
                    later(.failure(error))
                }
            }
            return .pending
        }
    }

    func check(_ session: BrokerSession) throws(BrokerError) {
        guard session.state.attachment == session.token else {
            throw BrokerError(.sessionTakenOver, "session \(session.name) is no longer attached to this connection")
        }
    }
}
