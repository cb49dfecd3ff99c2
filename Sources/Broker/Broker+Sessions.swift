// Sessions ending for good (expired by the ledger, dropped at startup) and what they leave to others.
import LedgerCore
import LMDBStorage
import MQTTCodec

extension Broker {
    /// The ledger expired (or clean-started) the session: drop everything, also on disk.
    /// A will still waiting for its delay is published first (the session ended).
    ///
    /// A session that is attached is left alone: the ledger never expires a connected
    /// session, and a clean start is already handled by `attach(sessionPresent: false)`, so
    /// a late call must not wipe the new connection's subscriptions.
    public func endSession(_ name: SessionName) async throws {
        let waiter: CommitWaiter? = locked {
            guard let state = sessions[name], state.attachment == 0 else { return nil }
            if let will = state.pendingWill {
                state.pendingWill = nil
                publishWill(will, from: state)
            }
            var batch = StoreBatch()
            discard(state, &batch)
            sessions[name] = nil
            return submitWaiting(batch)
        }
        if let waiter { try await waiter.wait().get() }
    }

    /// Drops stored state of every session not in `live` (call at startup after ledger recovery).
    public func retainOnly(live: Set<SessionName>) async throws {
        let waiter: CommitWaiter? = locked {
            var batch = StoreBatch()
            for (name, state) in sessions where !live.contains(name) && state.attachment == 0 {
                if let will = state.pendingWill {
                    state.pendingWill = nil
                    publishWill(will, from: state)
                }
                discard(state, &batch)
                sessions[name] = nil
            }
            return submitWaiting(batch)
        }
        if let waiter { try await waiter.wait().get() }
    }

    /// Forgets a session's state, in memory and (through `batch`) on disk.
    func discard(_ state: SessionState, _ batch: inout StoreBatch) {
        tellClusterSessionEnded(state)
        for filter in state.subscriptions.keys { tree.remove(filter, session: state) }
        redistributeShares(of: state)
        for delivery in state.inflight.values { forget(delivery, state, &batch, deleteRecord: false) }
        for delivery in state.queue { forget(delivery, state, &batch, deleteRecord: false) }
        if state.persistent, store != nil { batch.deletePrefix(.sessions, prefix: state.prefix) }
        state.subscriptions = [:]
        state.inflight = [:]
        state.removeAllQueued()
        state.overflowed = false
        state.inboundQoS2 = []
        state.inboundCommits = [:]
        state.attachment = 0
        state.sink = nil
        state.willStored = false
        state.pendingWill = nil
    }

    /// A session ends with copies it was chosen for by a shared subscription that its client
    /// does not have yet (queued, or sent and not acknowledged; not those already PUBREC'd):
    /// each goes to another member of that share, if there is one (MQTT 5.0 section 4.8.2).
    /// Called after the session's subscriptions left the tree.
    func redistributeShares(of state: SessionState) {
        guard !tree.groups.isEmpty else { return }
        let candidates = (state.inflight.values.filter { $0.state != .awaitingComp } + Array(state.queue))
            .filter { $0.share != nil }
            .sorted { $0.sequence < $1.sequence }
        guard !candidates.isEmpty else { return }
        var batch = StoreBatch()
        for old in candidates {
            guard let key = old.share, let group = tree.groups[key], let member = group.pick() else { continue }
            let session = member.session
            let message = old.message
            sequence += 1
            let delivery = OutboundMessage(
                sequence: sequence, message: message, qos: min(message.publish.qos, member.options.qos),
                retain: message.publish.retain && member.options.retainAsPublished,
                identifiers: member.identifier.map { [$0] } ?? [], share: key)
            if delivery.qos == .atMostOnce {
                guard session.sink != nil else { continue }
                if let packet = transmit(delivery, session, now: clock(), &batch) { post(session, packet) }
                continue
            }
            if session.persistent, store != nil { storeAndHold(delivery, for: session, &batch) }
            if let packet = enqueue(delivery, session, &batch) { post(session, packet) }
            redistributed += 1
        }
        _ = submitWaiting(batch)
    }
}
