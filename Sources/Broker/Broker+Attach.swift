// A connection taking a session over and letting it go: what a CONNECT resumes or discards,
// and what the end of a connection leaves behind.
import LedgerCore
import LMDBStorage
import MQTTCodec

extension Broker {
    /// After the ledger granted a CONNECT. `sessionPresent` false => any old state is discarded first.
    /// `persistent` = session expiry interval > 0. Resends in-flight (DUP) and queued messages to `sink`.
    ///
    /// A takeover (the session is still attached to an older connection) moves the session to
    /// this sink; the older `BrokerSession` is then stale: its `handle` throws 0x8E and its
    /// `detach` does nothing.
    public func attach(
        session name: SessionName, persistent: Bool, sessionPresent: Bool,
        protocolVersion: MQTTProtocolVersion, receiveMaximum: Int, sink: BrokerSink
    ) -> BrokerSession {
        attach(
            session: name, persistent: persistent, sessionPresent: sessionPresent, protocolVersion: protocolVersion,
            receiveMaximum: receiveMaximum, maximumPacketSize: nil, sink: sink)
    }

    /// As above, with the client's v5 Maximum Packet Size: a PUBLISH that would be larger is
    /// not sent, and the broker behaves as if its delivery had completed (MQTT-3.1.2-25), so
    /// that it does not hold an in-flight slot forever.
    public func attach(
        session name: SessionName, persistent: Bool, sessionPresent: Bool,
        protocolVersion: MQTTProtocolVersion, receiveMaximum: Int, maximumPacketSize: Int?, sink: BrokerSink
    ) -> BrokerSession {
        locked { attachLocked(name, persistent, sessionPresent, protocolVersion, receiveMaximum, maximumPacketSize, sink) }
    }

    func attachLocked(
        _ name: SessionName, _ persistent: Bool, _ sessionPresent: Bool,
        _ protocolVersion: MQTTProtocolVersion, _ receiveMaximum: Int, _ maximumPacketSize: Int?, _ sink: BrokerSink
    ) -> BrokerSession {
        var batch = StoreBatch()
        if let old = sessions[name] {
            // A will waiting for its delay is cancelled by the resumption (MQTT-3.1.3-9) and
            // sent now when the session starts over. The will of a connection taken over is
            // sent unless the session resumes within its delay.
            if let will = old.pendingWill {
                old.pendingWill = nil
                if !sessionPresent { publishWill(will, from: old) }
                forgetStoredWill(old, &batch)
            }
            if old.attachment != 0, let will = old.will {
                old.will = nil
                if !sessionPresent || willDelay(will, old) == 0 { publishWill(will, from: old) }
                forgetStoredWill(old, &batch)
            }
        }
        if !sessionPresent, let old = sessions[name] {
            discard(old, &batch)
            sessions[name] = nil
        }
        let state: SessionState
        if let existing = sessions[name] {
            state = existing
            if state.persistent != persistent { changePersistence(state, to: persistent, &batch) }
        } else {
            state = SessionState(name: name, persistent: persistent)
            sessions[name] = state
        }
        attachments += 1
        state.attachment = attachments
        state.sink = sink
        if !state.queue.isEmpty { noteBacklog(state) }
        state.readsServerTopics = false
        // Resumed before its overflow ended it (the ledger decides which came first; its end
        // then disconnects this connection), or its end could not be recorded: it queues again
        // rather than never getting a message.
        state.overflowed = false
        // Whatever was decided for the previous connection is moot: in-flight messages go
        // again below, and QoS 0 ones are not owed.
        state.outbox.removeAll()
        state.version = protocolVersion
        state.window = min(max(receiveMaximum, 1), 65535)
        state.maximumPacketSize = maximumPacketSize

        // Redelivery (MQTT-4.4.0-1): unacknowledged PUBLISHes again with DUP, in their
        // original order, and PUBRELs for those the client has PUBREC'd.
        if !state.inflight.isEmpty {
            let now = clock()
            var packets: [MQTTPacket] = []
            for delivery in state.inflight.values.sorted(by: { $0.sequence < $1.sequence }) {
                if delivery.state == .awaitingComp {
                    packets.append(.pubrel(MQTTPublishResponse(packetIdentifier: delivery.packetIdentifier)))
                } else if delivery.durable, let packet = transmit(delivery, state, now: now, &batch) {
                    packets.append(packet)
                }
            }
            post(state, packets)
        }
        pump(state, &batch)
        submit(batch)
        tellClusterOfSession(state)
        return BrokerSession(name: name, broker: self, state: state, token: state.attachment)
    }

    /// The connection ended without a normal DISCONNECT (lost connection, keep-alive timeout,
    /// protocol error, server shutdown, DISCONNECT 0x04): as `detach(_:publishWill: true)`.
    public func detach(_ session: BrokerSession) {
        locked { detachLocked(session, publishWill: true) }
    }

    /// The connection ended. Non-persistent sessions lose their state; persistent ones start
    /// queueing. `publishWill`: false after a DISCONNECT with reason 0x00 (the will is then
    /// discarded, MQTT-3.1.2-10), true otherwise: the will goes after its delay (see
    /// `BrokerSession.setWill`), on a timer the broker owns.
    public func detach(_ session: BrokerSession, publishWill: Bool) {
        locked { detachLocked(session, publishWill: publishWill) }
    }

    func detachLocked(_ session: BrokerSession, publishWill: Bool) {
        let state = session.state
        guard state.attachment == session.token else { return }
        state.attachment = 0
        state.sink = nil
        if let will = state.will {
            state.will = nil
            var batch = StoreBatch()
            let delay = willDelay(will, state)
            if publishWill, delay > 0 {
                let due = clock() + Int64(delay) * 1_000_000
                storeWill(will, state, due: due, &batch)
                schedule(will, state, due: due)
            } else {
                if publishWill { self.publishWill(will, from: state) }
                forgetStoredWill(state, &batch)
            }
            submit(batch)
        }
        if state.persistent {
            tellClusterOfSession(state)
        } else {
            var batch = StoreBatch()
            discard(state, &batch)
            if sessions[state.name] === state { sessions[state.name] = nil }
            submit(batch)
        }
    }

    /// A session resumed with another expiry: a persistent one that becomes non-persistent
    /// leaves the disk; the other way round everything it holds is written.
    func changePersistence(_ state: SessionState, to persistent: Bool, _ batch: inout StoreBatch) {
        state.persistent = persistent
        guard store != nil else { return }
        let deliveries = Array(state.inflight.values) + Array(state.queue)
        if !persistent {
            for delivery in deliveries {
                forget(delivery, state, &batch, deleteRecord: false)
                delivery.durable = true
            }
            batch.deletePrefix(.sessions, prefix: state.prefix)
            state.willStored = false
            return
        }
        for (filter, subscriber) in state.subscriptions {
            batch.put(
                .sessions, key: BrokerRecords.subscriptionKey(state.prefix, filter),
                value: BrokerRecords.subscriptionValue(state.prefix, filter, subscriber.options, subscriber.identifier))
        }
        for id in state.inboundQoS2 {
            batch.put(.sessions, key: BrokerRecords.inboundKey(state.prefix, id), value: [])
        }
        for delivery in deliveries.sorted(by: { $0.sequence < $1.sequence }) {
            // Already sent or in memory as durable: nothing to hold back, only records to write.
            guard storeMessage(delivery.message, &batch) else { continue }
            delivery.message.references += 1
            delivery.stored = true
            putRecord(delivery, state, &batch)
        }
    }
}
