// The outbound QoS 1 and 2 flows: PUBACK, PUBREC, PUBCOMP from the client end a delivery.
import LMDBStorage
import MQTTCodec

extension Broker {
    /// PUBACK, PUBREC and PUBCOMP for messages the broker sent. Nothing to wait for: the
    /// client already has the message, and losing the deletion only means a resend.
    func acknowledge(
        _ response: MQTTPublishResponse, _ expected: OutboundState, from session: BrokerSession
    ) throws(BrokerError) -> [MQTTPacket] {
        let state = session.state
        return try locked { () throws(BrokerError) -> [MQTTPacket] in
            try check(session)
            let id = response.packetIdentifier
            var batch = StoreBatch()
            defer { submit(batch) }
            guard let delivery = state.inflight[id] else {
                // PUBREC for an unknown identifier still gets its PUBREL (v5: 0x92);
                // stray PUBACKs and PUBCOMPs are ignored.
                if expected == .awaitingRec {
                    let code: MQTTReasonCode = state.version == .mqtt5 ? .packetIdentifierNotFound : .success
                    return [.pubrel(MQTTPublishResponse(packetIdentifier: id, reasonCode: code))]
                }
                return []
            }
            switch (expected, delivery.state) {
            case (.awaitingAck, .awaitingAck), (.awaitingComp, .awaitingComp):
                finish(delivery, state, &batch)
                return []
            case (.awaitingRec, .awaitingRec):
                if response.reasonCode.isFailure {
                    // The receiver refused it: the flow ends here, without PUBREL (4.3.3).
                    finish(delivery, state, &batch)
                    return []
                }
                delivery.state = .awaitingComp
                if delivery.stored { putRecord(delivery, state, &batch) }
                return [.pubrel(MQTTPublishResponse(packetIdentifier: id))]
            case (.awaitingRec, .awaitingComp):
                return [.pubrel(MQTTPublishResponse(packetIdentifier: id))]
            default:
                throw BrokerError(
                    .protocolError,
                    "\(expected == .awaitingAck ? "PUBACK" : expected == .awaitingRec ? "PUBREC" : "PUBCOMP") "
                        + "for packet identifier \(id), which is in another QoS flow")
            }
        }
    }

    /// The end of a delivery's flow: out of the window, off the disk, next one in.
    func finish(_ delivery: OutboundMessage, _ session: SessionState, _ batch: inout StoreBatch) {
        session.inflight[delivery.packetIdentifier] = nil
        forget(delivery, session, &batch, deleteRecord: true)
        pump(session, &batch)
    }
}
