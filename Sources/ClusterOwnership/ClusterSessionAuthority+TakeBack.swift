import EtcdGateway
import Foundation
import LedgerCore
import SessionLedger

// Grants that etcd holds and this node did not give: no session is owned in etcd without
// the `connected` fact in the deciding node's ledger (R8 across the cluster).

extension ClusterSessionAuthority {
    /// A claim's write, as etcd applied it.
    struct Grant: Sendable {
        var name: SessionName
        var record: SessionRecord
        var epoch: Int64
        var connection: ConnectionNumber
    }

    /// A claim that etcd applied but whose `connected` event this node's ledger could not make
    /// durable (the client hears 0x88): the session goes back in etcd to what it was, if no
    /// one has changed it since.
    /// - a new session (or one past its deadline) is deleted with the slot it took;
    /// - one resumed while disconnected waits again until its old deadline;
    /// - one taken over from a connection of this node is that connection's again (the front
    ///   has not closed it: it closes a replaced connection only on a grant);
    /// - one taken over from another node stays disconnected from now: that node has seen the
    ///   move and ended its connection (0x8E).
    /// With no answer from etcd, the session is ended as an unanswered claim's is (`abandon`).
    func takeBack(_ grant: Grant, previous: ClusterView.Entry?, replaced: Held?) async {
        let key = keys.session(grant.name)
        let name = grant.name.value
        state.withLock { state in
            if state.held[name]?.connection == grant.connection { state.held.removeValue(forKey: name) }
        }
        let compare = [EtcdCompare(key: key, .modRevision(grant.epoch))]
        var restored: SessionRecord?
        var write: ClusterWrite
        if let previous, replaced != nil || !previous.record.connected {
            restored = previous.record
            write = ClusterWrite(
                compare: compare, success: [.put(key: key, value: previous.record.encoded())], reads: [.range(key: key)], keys: [key])
        } else if let previous {
            let ending = end(previous.record, key: key, modRevision: grant.epoch, expiry: previous.record.expiry)
            restored = ending.record
            write = ending.write
        } else {
            write = end(grant.record, key: key, modRevision: grant.epoch, expiry: 0).write
        }
        switch await writes.submit(write) {
        case .applied(let revision):
            view.apply(name: name, entry: restored.map { .init(record: $0, modRevision: revision) }, revision: revision)
            if let replaced {
                state.withLock { state in
                    if state.held[name] == nil {
                        state.held[name] = Held(connection: replaced.connection, modRevision: revision, record: replaced.record)
                    }
                }
            }
            logger.warning(
                "a grant this node's ledger could not record was taken back in etcd",
                metadata: ["session_name": "\(name)", "epoch": "\(grant.epoch)", "revision": "\(revision)"])
        case .conflict:
            // Changed since (taken over, ended): no longer this grant.
            break
        case .lapsed:
            // This node's lease is gone: its connected sessions are ended by the others.
            break
        case .failed:
            abandon(grant.name, connection: grant.connection)
        }
    }

    /// A claim whose Txn got no answer: if etcd did apply it, the session stands connected on
    /// this node for a connection that was refused. It is ended (its key deleted, or written
    /// disconnected) once etcd answers, so that its slot does not stay taken; nothing is
    /// recorded here, as nothing was granted here.
    func abandon(_ name: SessionName, connection: ConnectionNumber) {
        let key = keys.session(name)
        Task {
            for attempt in 0..<30 {
                if attempt > 0 { try? await Task.sleep(for: .seconds(1)) }
                guard let (found, _) = try? await gateway.range(key) else { continue }
                guard let kv = found.first, let record = SessionRecord.decode(kv.value),
                    record.node == nodeID, record.connection == connection
                else { return }
                let ending = end(record, key: key, modRevision: kv.modRevision, expiry: record.expiry)
                if let result = try? await gateway.txn(ending.write.txn) {
                    if result.succeeded {
                        view.apply(name: name.value, entry: ending.record.map { .init(record: $0, modRevision: result.revision) }, revision: result.revision)
                    }
                    return
                }
            }
        }
    }

}
