import EtcdGateway
import Foundation
import LedgerCore
import Synchronization

/// What this node knows of the cluster's keys: every session, every client's slots, the
/// live nodes, as of `revision`. Loaded with one range, kept current by the watch and by
/// this node's own Txns (a change is taken only if newer than what is held). Claims start
/// from it and compare the mod revision they read, so a stale view costs a retry, never a
/// wrong grant.
final class ClusterView: Sendable {
    struct Entry: Sendable {
        var record: SessionRecord
        var modRevision: Int64

        init(record: SessionRecord, modRevision: Int64) {
            self.record = record
            self.modRevision = modRevision
        }

        init?(_ kv: EtcdKeyValue) {
            guard let record = SessionRecord.decode(kv.value) else { return nil }
            self.init(record: record, modRevision: kv.modRevision)
        }
    }

    private struct Tables {
        var sessions: [String: Entry] = [:]
        /// Deleted sessions' revisions, so that an older put arriving late does not revive one.
        var deletedAt: [String: Int64] = [:]
        var slots: [String: [Int: String]] = [:]
        var nodes: [String: Int64] = [:]
        var revision: Int64 = 0
    }

    let keys: ClusterKeys
    private let tables = Mutex(Tables())

    init(keys: ClusterKeys) { self.keys = keys }

    var revision: Int64 { tables.withLock { $0.revision } }

    func session(_ name: String) -> Entry? { tables.withLock { $0.sessions[name] } }

    func slots(of clientKey: String) -> [Int: String] { tables.withLock { $0.slots[clientKey] ?? [:] } }

    func sessionNames() -> [String] { tables.withLock { Array($0.sessions.keys) } }

    func sessions() -> [String: Entry] { tables.withLock { $0.sessions } }

    func liveNodes() -> Set<String> { tables.withLock { Set($0.nodes.keys) } }

    /// Every key under the root, replacing what was known (start, or a watch that fell behind
    /// a compaction).
    func load(_ keyValues: [EtcdKeyValue], revision: Int64) {
        var fresh = Tables()
        fresh.revision = revision
        for kv in keyValues { Self.put(kv, into: &fresh, keys: keys) }
        tables.withLock { $0 = fresh }
    }

    /// A watch update: changes in revision order.
    func apply(_ update: EtcdGateway.WatchUpdate) {
        tables.withLock { tables in
            for event in update.events {
                switch event.kind {
                case .put: Self.put(event.keyValue, into: &tables, keys: keys)
                case .delete: Self.delete(event.keyValue, into: &tables, keys: keys)
                }
            }
            tables.revision = max(tables.revision, update.revision)
        }
    }

    /// This node's own write of a session (nil: deleted), before the watch reports it.
    func apply(name: String, entry: Entry?, revision: Int64? = nil) {
        tables.withLock { tables in
            let at = entry?.modRevision ?? revision ?? 0
            if let current = tables.sessions[name], current.modRevision >= at { return }
            if let deleted = tables.deletedAt[name], deleted >= at { return }
            if let entry {
                tables.sessions[name] = entry
                tables.slots[entry.record.ownerName.key, default: [:]][entry.record.slot] = name
            } else if let gone = tables.sessions.removeValue(forKey: name) {
                tables.deletedAt[name] = at
                tables.slots[gone.record.ownerName.key]?.removeValue(forKey: gone.record.slot)
            }
        }
    }

    private static func put(_ kv: EtcdKeyValue, into tables: inout Tables, keys: ClusterKeys) {
        let key = kv.keyString
        if let name = keys.sessionName(ofKey: key) {
            guard let entry = Entry(kv) else { return }
            if let current = tables.sessions[name], current.modRevision >= kv.modRevision { return }
            tables.sessions[name] = entry
            tables.deletedAt.removeValue(forKey: name)
        } else if let (client, index) = keys.slot(ofKey: key) {
            tables.slots[client, default: [:]][index] = String(decoding: kv.value, as: UTF8.self)
        } else if let node = keys.nodeID(ofKey: key) {
            tables.nodes[node] = kv.lease
        }
    }

    private static func delete(_ kv: EtcdKeyValue, into tables: inout Tables, keys: ClusterKeys) {
        let key = kv.keyString
        if let name = keys.sessionName(ofKey: key) {
            if let current = tables.sessions[name], current.modRevision > kv.modRevision { return }
            tables.sessions.removeValue(forKey: name)
            tables.deletedAt[name] = kv.modRevision
        } else if let (client, index) = keys.slot(ofKey: key) {
            tables.slots[client]?.removeValue(forKey: index)
            if tables.slots[client]?.isEmpty == true { tables.slots.removeValue(forKey: client) }
        } else if let node = keys.nodeID(ofKey: key) {
            tables.nodes.removeValue(forKey: node)
        }
    }

    /// The slots a range of one client's slot keys shows.
    static func slots(from keyValues: [EtcdKeyValue], keys: ClusterKeys) -> [Int: String] {
        var slots: [Int: String] = [:]
        for kv in keyValues {
            if let (_, index) = keys.slot(ofKey: kv.keyString) { slots[index] = String(decoding: kv.value, as: UTF8.self) }
        }
        return slots
    }
}
