import ArgumentParser
import Foundation
import LMDBStorage
import SessionLedger

// Several nodes' ledgers (directories or `mdb_copy` backups) read as one history: every
// ledger is checked as on its own (format, numbering, chain), then their events are merged
// by epoch (the etcd revision of the decision; README "A cluster on etcd"), each naming its
// node. Within one epoch, ends come before starts: a takeover's `disconnected` on the old
// node and the `connected` on the new one share the epoch of the Txn that moved the session;
// a refusal comes last (it was decided on what that revision held).

/// One event of the merged history and the node whose ledger holds it.
struct NodeEvent {
    var node: String
    var event: LedgerEvent

    /// The merge order: epoch, then ends before starts before refusals, then the time and
    /// the node's own order.
    static func precedes(_ a: NodeEvent, _ b: NodeEvent) -> Bool {
        if a.event.epoch != b.event.epoch { return a.event.epoch < b.event.epoch }
        let (ra, rb) = (rank(a.event.kind), rank(b.event.kind))
        if ra != rb { return ra < rb }
        if a.event.timestamp != b.event.timestamp { return a.event.timestamp < b.event.timestamp }
        if a.node != b.node { return a.node < b.node }
        return a.event.sequence < b.event.sequence
    }

    private static func rank(_ kind: LedgerEventKind) -> Int {
        switch kind {
        case .disconnected, .expired: 0
        case .connected: 1
        // A refusal was decided on the state at its epoch: after what that revision wrote.
        case .rejected: 2
        }
    }
}

extension LedgerOptions {
    /// More than one `--data-dir`: the subcommands answer from the merged history.
    var isMerged: Bool { dataDirs.count > 1 }

    /// The nodes' names: each directory's last path component, the whole path where two share one.
    var nodeNames: [String] {
        let last = dataDirs.map { (($0 as NSString).standardizingPath as NSString).lastPathComponent }
        return zip(dataDirs, last).map { path, name in last.filter { $0 == name }.count > 1 ? path : name }
    }

    /// Every event of every ledger, checked ledger by ledger, merged by epoch.
    func mergedHistory() throws -> [NodeEvent] {
        var all: [NodeEvent] = []
        for (directory, node) in zip(dataDirs, nodeNames) {
            let archive = (directory as NSString).appendingPathComponent("archive")
            try LedgerOptions.read(directory) { _, snapshot in
                try LogScan.run(snapshot, archive: archive) { _ in }.requireIntact(node: node)
                let problem = try ArchivedLog.walk(snapshot, archive: archive, from: 1) { _, bytes in
                    if !CheckpointRecordFormat.isCheckpoint(bytes) {
                        all.append(NodeEvent(node: node, event: try EventRecordFormat.decode(bytes).event))
                    }
                    return true
                }
                if let problem { throw AuditError("the ledger of node \(node) is damaged, no answer given: \(problem)") }
            }
        }
        all.sort(by: NodeEvent.precedes)
        return all
    }

    /// The sessions live after the merged events up to `time` (all of them when nil).
    func mergedSessions(through time: Int64?) throws -> (sessions: [SessionName: (node: String, entry: SessionEntry)], known: Set<String>) {
        var sessions: [SessionName: (node: String, entry: SessionEntry)] = [:]
        var known: Set<String> = []
        for item in try mergedHistory() {
            if let time, item.event.timestamp > time { continue }
            known.insert(item.event.authenticationName.key)
            if case .rejected = item.event.kind { continue }
            let name = item.event.sessionName
            if let next = SessionTransition.apply(item.event, to: sessions[name]?.entry) {
                sessions[name] = (item.node, next)
            } else {
                sessions.removeValue(forKey: name)
            }
        }
        return (sessions, known)
    }
}

extension ScanOutcome {
    func requireIntact(node: String) throws {
        if let problem {
            throw AuditError("the ledger of node \(node) is damaged, no answer given: \(problem) (custody-audit verify checks it)")
        }
    }
}

/// The merged history as rows or JSON Lines, each event naming its node and epoch.
enum MergedOutput {
    static let columns = ["NODE", "EPOCH", "SEQ", "TIME", "KIND", "REASON", "CLIENT", "SESSION", "CONN", "EXPIRY", "REMOTE"]

    static func row(_ item: NodeEvent) -> [String] {
        let e = item.event
        return [
            item.node, "\(e.epoch)", "\(e.sequence)", ISO8601Time.format(e.timestamp), e.kind.name, e.kind.reasonName ?? "-",
            e.authenticationName.value, e.sessionName.value, "\(e.connection)", "\(e.expiryInterval)",
            e.remoteAddress.isEmpty ? "-" : e.remoteAddress,
        ]
    }

    static func json(_ item: NodeEvent) -> String {
        let e = item.event
        var j = JSONObject()
        j.string("node", item.node)
        j.int("epoch", e.epoch)
        j.int("seq", e.sequence)
        j.time("time", e.timestamp)
        j.string("kind", e.kind.name)
        j.string("reason", e.kind.reasonName)
        j.string("authenticationName", e.authenticationName.value)
        j.string("sessionName", e.sessionName.value)
        j.int("connection", e.connection)
        j.int("protocolVersion", e.protocolVersion == .unknown ? nil : UInt64(e.protocolVersion.rawValue))
        j.bool("cleanStart", e.cleanStart)
        j.int("sessionExpiryInterval", UInt64(e.expiryInterval))
        j.string("remoteAddress", e.remoteAddress.isEmpty ? nil : e.remoteAddress)
        return String(decoding: j.close(), as: UTF8.self)
    }

    static func print(_ items: [NodeEvent], json: Bool) {
        var out = OutputBuffer()
        if json {
            for item in items {
                out.line(Self.json(item))
                out.flushIfLarge()
            }
        } else {
            renderTable(columns, items.map(row), into: &out)
        }
        out.flush()
    }
}

/// `verify --cluster`: no session ever had two owners at once. Each `connected` opens an
/// interval of its connection, closed by that connection's `disconnected` (or the session's
/// `expired`); in epoch order a `connected` while another connection's interval is open is
/// an overlap.
enum ClusterCheck {
    struct Overlap: CustomStringConvertible {
        var session: String
        var first: NodeEvent
        var second: NodeEvent
        var description: String {
            "session \(session) connected on \(first.node) (connection \(first.event.connection), epoch \(first.event.epoch)) and on \(second.node) (connection \(second.event.connection), epoch \(second.event.epoch)) at once"
        }
    }

    static func overlaps(_ history: [NodeEvent]) -> [Overlap] {
        var open: [String: NodeEvent] = [:]
        var found: [Overlap] = []
        for item in history {
            let name = item.event.sessionName.value
            switch item.event.kind {
            case .connected:
                if let current = open[name], !(current.node == item.node && current.event.connection == item.event.connection) {
                    found.append(Overlap(session: name, first: current, second: item))
                }
                open[name] = item
            case .disconnected:
                if let current = open[name], current.node == item.node || current.event.connection == item.event.connection {
                    open.removeValue(forKey: name)
                }
            case .expired:
                open.removeValue(forKey: name)
            case .rejected:
                break
            }
        }
        return found
    }
}
