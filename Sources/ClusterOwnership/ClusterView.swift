import EtcdGateway
import Foundation
import LedgerCore
import Synchronization

/// What this node knows of the cluster's keys: every session, every client's slots, the
/// live nodes, as of `revision`. Loaded with one range, kept current by the watch and by
/// this node's own Txns (a change is taken only if newer than what is held). Claims start
/// from it and compare the mod revision they read, so a stale view costs a retry, never a
/// wrong grant.
///
/// The slots are read from the session records (each names its slot), not from the slot
/// keys: etcd writes both in one Txn, so the watch need not carry the slot keys' events too.
/// A slot key left without its session (`ClusterSessionAuthority.freeStaleSlots`) is not in
/// the view; a claim that offers it fails its compare and reads the client's slots.
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
        /// Deleted sessions' revisions, so that an older put arriving late does not revive one;
        /// forgotten once the watch has passed them.
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

    /// Live sessions (connected or waiting to expire) and connected ones, of every node.
    func counts() -> SessionCounts {
        tables.withLock { tables in
            SessionCounts(live: tables.sessions.count, connected: tables.sessions.values.reduce(0) { $0 + ($1.record.connected ? 1 : 0) })
        }
    }

    func liveNodes() -> Set<String> { tables.withLock { Set($0.nodes.keys) } }

    /// Every key under the root, replacing what was known (start, or a watch that fell behind
    /// a compaction).
    func load(_ keyValues: [EtcdKeyValue], revision: Int64) {
        var fresh = Tables()
        fresh.revision = revision
        for kv in keyValues { Self.put(kv, into: &fresh, keys: keys) }
        tables.withLock { $0 = fresh }
    }

    /// A change of one session key that a watch update made to the view.
    struct SessionChange: Sendable {
        var name: String
        /// The record after it; nil: deleted.
        var entry: Entry?
        var modRevision: Int64
    }

    /// A watch update: changes in revision order. Answers the session changes (each record
    /// decoded once, here) and the nodes whose keys went. A put the view already holds (this
    /// node's own write, applied when etcd answered it) is not decoded again.
    func apply(_ update: EtcdGateway.WatchUpdate) -> (sessions: [SessionChange], nodesGone: [String]) {
        var sessionEvents: [(name: String, event: EtcdWatchEvent)] = []
        var others: [EtcdWatchEvent] = []
        var nodesGone: [String] = []
        for event in update.events {
            let key = event.keyValue.keyString
            if let name = keys.sessionName(ofKey: key) {
                sessionEvents.append((name, event))
            } else {
                others.append(event)
                if event.kind == .delete, let node = keys.nodeID(ofKey: key) { nodesGone.append(node) }
            }
        }
        let known = tables.withLock { tables in
            sessionEvents.map { name, event in
                event.kind == .put && (tables.sessions[name]?.modRevision ?? -1) >= event.keyValue.modRevision
            }
        }
        var changes: [SessionChange] = []
        for (index, (name, event)) in sessionEvents.enumerated() where !known[index] {
            let entry = event.kind == .put ? Entry(event.keyValue) : nil
            if event.kind == .put && entry == nil { continue }
            changes.append(SessionChange(name: name, entry: entry, modRevision: event.keyValue.modRevision))
        }
        tables.withLock { tables in
            for event in others {
                switch event.kind {
                case .put: Self.put(event.keyValue, into: &tables, keys: keys)
                case .delete: Self.delete(event.keyValue, into: &tables, keys: keys)
                }
            }
            for change in changes {
                if let entry = change.entry {
                    Self.put(name: change.name, entry, into: &tables)
                } else {
                    Self.delete(name: change.name, at: change.modRevision, into: &tables)
                }
            }
            tables.revision = max(tables.revision, update.revision)
            if tables.deletedAt.count > 4096 {
                let revision = tables.revision
                tables.deletedAt = tables.deletedAt.filter { $0.value > revision }
            }
        }
        return (changes, nodesGone)
    }

    /// This node's own write of a session (nil: deleted), before the watch reports it.
    func apply(name: String, entry: Entry?, revision: Int64? = nil) {
        tables.withLock { tables in
            let at = entry?.modRevision ?? revision ?? 0
            if let entry {
                Self.put(name: name, entry, into: &tables)
            } else {
                Self.delete(name: name, at: at, into: &tables)
            }
        }
    }

    /// A session's record at its mod revision, unless the view holds a newer one or its
    /// deletion; its slot with it.
    private static func put(name: String, _ entry: Entry, into tables: inout Tables) {
        if let current = tables.sessions[name], current.modRevision >= entry.modRevision { return }
        if let deleted = tables.deletedAt[name], deleted >= entry.modRevision { return }
        if let current = tables.sessions[name] { removeSlot(of: name, current.record, from: &tables) }
        tables.sessions[name] = entry
        tables.slots[entry.record.ownerName.key, default: [:]][entry.record.slot] = name
    }

    private static func delete(name: String, at revision: Int64, into tables: inout Tables) {
        if let current = tables.sessions[name], current.modRevision >= revision, revision > 0 { return }
        if let deleted = tables.deletedAt[name], deleted >= revision { return }
        tables.deletedAt[name] = revision
        if let gone = tables.sessions.removeValue(forKey: name) { removeSlot(of: name, gone.record, from: &tables) }
    }

    private static func removeSlot(of name: String, _ record: SessionRecord, from tables: inout Tables) {
        let client = record.ownerName.key
        guard tables.slots[client]?[record.slot] == name else { return }
        tables.slots[client]?.removeValue(forKey: record.slot)
        if tables.slots[client]?.isEmpty == true { tables.slots.removeValue(forKey: client) }
    }

    /// Node keys (and, at a load, session keys); slot keys are not kept (see above).
    private static func put(_ kv: EtcdKeyValue, into tables: inout Tables, keys: ClusterKeys) {
        let key = kv.keyString
        if let name = keys.sessionName(ofKey: key) {
            guard let entry = Entry(kv) else { return }
            put(name: name, entry, into: &tables)
        } else if let node = keys.nodeID(ofKey: key) {
            tables.nodes[node] = kv.lease
        }
    }

    private static func delete(_ kv: EtcdKeyValue, into tables: inout Tables, keys: ClusterKeys) {
        let key = kv.keyString
        if let name = keys.sessionName(ofKey: key) {
            delete(name: name, at: kv.modRevision, into: &tables)
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
