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
        guard pubsubSession != nil, brokerBusy else { return writeInOrder([answer]) }
        brokerQueue.append(.answer(answer))
    }

    /// Writes `answers` now, or after the answers still on their way (MQTT-4.6.0-2).
    func writeInOrder(_ answers: [MQTTPacket]) {
        guard !answers.isEmpty else { return }
        guard answersOnTheWay.isEmpty else { return answersOnTheWay.append(AnswerSlot(.own(answers))) }
        write(answers)
    }

    /// Hands the client's packets to the broker in order, after the front's own checks
    /// (`screened`). What the broker answers at once (a PUBLISH that makes nothing durable
    /// first, acknowledgements) is settled here, in the loop; a PUBLISH it decided and is
    /// making durable (`.decided`) gets a place among the answers on their way and the next
    /// packet goes at once, so a publisher's window of QoS 1 messages shares the store's
    /// commits; what the broker decides later (`.pending`: PUBREL, SUBSCRIBE, UNSUBSCRIBE)
    /// holds the rest until `answerCame`. No answer overtakes an earlier one: what is ready
    /// while earlier answers are on their way waits behind them. Once everything is answered,
    /// a close that waited for it (`closingAfterBroker`) goes ahead.
    func pump(_ session: any PubSubSession) {
        while let work = brokerQueue.popFirst() {
            let packet: MQTTPacket
            switch work {
            case .answer(let answer):
                writeInOrder([answer])
                continue
            case .packet(let next):
                guard let checked = screened(next) else { continue }
                packet = checked
            }
            brokerBusy = true
            let slot = AnswerSlot(.broker(nil))
            let bound = NIOLoopBound(self, eventLoop: eventLoop)
            let boundSlot = NIOLoopBound(slot, eventLoop: eventLoop)
            let loop = eventLoop
            let answer: PubSubAnswer
            do {
                answer = try session.handle(packet, answerLater: { result in
                    loop.execute { bound.value.answerCame(result, into: boundSlot.value, session: session) }
                })
            } catch {
                guard settle(.failure(error)) else { return }
                continue
            }
            switch answer {
            case .now(let packets):
                guard settle(.success(packets)) else { return }
            case .decided:
                slot.wasDecided = true
                answersOnTheWay.append(slot)
            case .pending:
                return
            }
        }
        brokerBusy = false
        closeIfAllAnswered()
    }

    /// The broker's answer to a packet it decided later (`.pending`), or to a PUBLISH it decided
    /// at once and has now made durable (`.decided`, whose place is `slot`).
    func answerCame(_ result: Result<[MQTTPacket], any Error>, into slot: AnswerSlot, session: any PubSubSession) {
        if slot.wasDecided {
            // Its place is gone when the connection failed or closed meanwhile: nothing to write.
            guard answersOnTheWay.contains(where: { $0 === slot }) else { return }
            slot.content = .broker(result)
            writeReadyAnswers()
        } else if settle(result) {
            pump(session)
        }
        resumeReadsIfHeld()
    }

    /// Writes the answers at the head of `answersOnTheWay` that are ready, in order.
    private func writeReadyAnswers() {
        while let first = answersOnTheWay.first, first.isReady {
            _ = answersOnTheWay.popFirst()
            switch first.content {
            case .own(let packets):
                write(packets)
            case .broker(.success(let packets)?):
                // A PUBLISH's answer: nothing to merge (`completed` is for SUBACKs).
                guard closingAfterBroker == nil, machine.isActive else { continue }
                machine.answered(packets)
                write(packets)
            case .broker(.failure(let error)?):
                guard closingAfterBroker == nil else { continue }
                guard machine.isActive else { return answersOnTheWay.removeAll() }
                answersOnTheWay.removeAll()
                brokerQueue.removeAll()
                brokerBusy = false
                subscribeScreen = nil
                let (code, why) = brokerFailure(error)
                return perform(machine.brokerFailed(code: code, why: why))
            case .broker(nil):
                break
            }
        }
        closeIfAllAnswered()
    }

    /// The close a client's DISCONNECT (or its going) asked for, once nothing it sent is
    /// still with the broker or on its way back.
    private func closeIfAllAnswered() {
        guard !brokerBusy, brokerQueue.isEmpty, answersOnTheWay.isEmpty,
            let closing = closingAfterBroker?.value
        else { return }
        closingAfterBroker = nil
        end(closing)
    }

    /// The broker's answer to the packet whose decision it had: written in its turn (or, once
    /// the client is closing, dropped), or the connection closed for a broker failure. True
    /// when the next packet may go to the broker.
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
            writeInOrder(answers)
            return true
        case .failure(let error):
            brokerBusy = false
            subscribeScreen = nil
            answersOnTheWay.removeAll()
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
