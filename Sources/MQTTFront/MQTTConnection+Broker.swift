import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

// The broker pump: the client's pub/sub packets go to the broker one at a time, in order;
// its answers come back on this loop. A DISCONNECT or a lost socket that arrives while
// packets are still with the broker waits for them (`closingAfterBroker`), so that nothing
// the client sent before is lost.

extension MQTTConnection {
    /// The broker's deliveries (`ConnectionSink`), from any thread: always written later,
    /// never inline (the broker calls this under its lock, and a write that fails can close
    /// the connection, which then detaches from the broker).
    func send(_ packets: [MQTTPacket]) {
        guard !packets.isEmpty else { return }
        eventLoop.execute { self.writeDeliveries(packets) }
    }

    /// Writes the broker's deliveries, unless the client does not keep up: above the outbound
    /// high-water mark QoS 0 messages are dropped (QoS 1/2 are bounded by the in-flight cap
    /// and wait in the session queue), and a client still above it after the slow-consumer
    /// timeout is disconnected. Its buffer then stays near the mark, however much is published.
    private func writeDeliveries(_ packets: [MQTTPacket]) {
        guard let io else { return }
        guard io.isAboveOutboundHighWater else {
            if slowSince != nil { slowSince = nil }
            return write(packets)
        }
        let now = NIODeadline.now()
        if let since = slowSince?.value {
            if now - since > tunables.slowConsumerTimeout {
                slowSince = nil
                perform(machine.slowConsumer(
                    why: "quotaExceeded: above the outbound high-water mark for more than \(tunables.slowConsumerTimeout.nanoseconds / 1_000_000_000) s"))
                return
            }
        } else {
            slowSince = Boxed(now)
            services.logger.notice("slow consumer", metadata: [
                "connection": "\(connection ?? 0)", "session_name": "\(sessionName.map { "\($0)" } ?? "-")",
                "remote_address": "\(remoteAddress)", "high_water_bytes": "\(tunables.outboundHighWaterBytes)",
            ])
        }
        var kept = packets
        kept.removeAll { packet in
            if case .publish(let publish) = packet { return publish.qos == .atMostOnce }
            return false
        }
        if kept.count < packets.count { services.metrics?.messagesDroppedSlowConsumer.increment(by: packets.count - kept.count) }
        write(kept)
    }

    // MARK: - Pub/sub

    func handToBroker(_ packet: MQTTPacket) {
        guard let session = pubsubSession else {
            let answers = MinimalPubSub.answer(packet, version: machine.protocolVersion ?? .mqtt3_1_1)
            machine.answered(answers)
            write(answers)
            return
        }
        brokerQueue.append(.packet(packet))
        if !brokerBusy { pump(session) }
    }

    /// Writes `answer` once the broker has answered everything the client sent before.
    func answerInOrder(_ answer: MQTTPacket) {
        guard pubsubSession != nil, brokerBusy else { return write([answer]) }
        brokerQueue.append(.answer(answer))
    }

    /// Hands the next packet to the broker, after the front's own checks (`screened`): what is
    /// answered here, or was answered by a limit (`answerInOrder`), is written in its turn, so
    /// no answer overtakes an earlier one (MQTT-4.6.0-2). What the broker answers at once
    /// (a PUBLISH that makes nothing durable first, acknowledgements) is settled here, in the
    /// loop, without leaving this thread; the rest is settled by `brokerAnswered` when the
    /// broker's answer comes back to this loop. Once the queue is empty, a close that waited
    /// for it (`closingAfterBroker`) goes ahead.
    func pump(_ session: any PubSubSession) {
        while let work = brokerQueue.popFirst() {
            let packet: MQTTPacket
            switch work {
            case .answer(let answer):
                write([answer])
                continue
            case .packet(let next):
                guard let checked = screened(next) else { continue }
                packet = checked
            }
            brokerBusy = true
            let bound = NIOLoopBound(self, eventLoop: eventLoop)
            let loop = eventLoop
            let now: Result<[MQTTPacket], any Error>
            do {
                guard let answers = try session.handle(packet, answerLater: { result in
                    loop.execute { bound.value.brokerAnswered(result, session: session) }
                }) else { return }
                now = .success(answers)
            } catch {
                now = .failure(error)
            }
            guard settle(now) else { return }
        }
        brokerBusy = false
        if let closing = closingAfterBroker?.value {
            closingAfterBroker = nil
            end(closing)
        }
    }

    func brokerAnswered(_ result: Result<[MQTTPacket], any Error>, session: any PubSubSession) {
        if settle(result) { pump(session) }
        resumeReadsIfHeld()
    }

    /// The broker's answer to the packet it had: written (or, once the client is closing,
    /// dropped), or the connection closed for a broker failure. True when the next packet
    /// may go to the broker.
    private func settle(_ result: Result<[MQTTPacket], any Error>) -> Bool {
        if closingAfterBroker != nil {
            // The client said DISCONNECT or is gone: answers are moot, what it sent before is not.
            subscribeScreen = nil
            if case .failure = result { brokerQueue.removeAll() }
            return true
        }
        guard machine.isActive else {
            brokerBusy = false
            return false
        }
        switch result {
        case .success(let packets):
            let answers = completed(packets)
            machine.answered(answers)
            write(answers)
            return true
        case .failure(let error):
            brokerBusy = false
            subscribeScreen = nil
            let (code, why) = brokerFailure(error)
            perform(machine.brokerFailed(code: code, why: why))
            return false
        }
    }

    func brokerFailure(_ error: any Error) -> (MQTTReasonCode, String) {
        if let failure = error as? any PubSubFailure { return (failure.reasonCode, "broker: \(error)") }
        return (.implementationSpecificError, "broker: \(error)")
    }
}
