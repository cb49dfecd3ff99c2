// Packets are decided under the lock and sent after it: a sink may call back into the broker.
import MQTTCodec

extension Broker {
    /// Queues packets for a session's sink (under the lock). They are sent when the lock is
    /// released, by `drain`, so that a sink may call back into the broker (a failed write
    /// that closes the channel and detaches, say) without deadlocking.
    func post(_ session: SessionState, _ packets: [MQTTPacket]) {
        guard !packets.isEmpty else { return }
        session.outbox.append(contentsOf: packets)
        if !session.dirty {
            session.dirty = true
            dirtySessions.append(session)
        }
    }

    func post(_ session: SessionState, _ packet: MQTTPacket) {
        session.outbox.append(packet)
        if !session.dirty {
            session.dirty = true
            dirtySessions.append(session)
        }
    }

    func takeDirty() -> [SessionState] {
        guard !dirtySessions.isEmpty else { return [] }
        let dirty = dirtySessions
        dirtySessions.removeAll(keepingCapacity: true)
        for session in dirty { session.dirty = false }
        return dirty
    }

    /// Sends a session's outbox outside the lock. One thread at a time drains a session, and
    /// it sends batches in the order they were posted: packets reach the sink in the order
    /// the broker decided them, whichever threads decided them.
    func drain(_ session: SessionState) {
        lock.lock()
        guard !session.draining else {
            lock.unlock()
            return
        }
        session.draining = true
        while true {
            guard !session.outbox.isEmpty, let sink = session.sink else {
                session.outbox.removeAll()
                session.draining = false
                lock.unlock()
                return
            }
            let packets = session.outbox
            session.outbox = []
            lock.unlock()
            sink.send(packets)
            lock.lock()
        }
    }
}
