import ArgumentParser
import SessionLedger

enum SessionStateFilter: String, ExpressibleByArgument, CaseIterable {
    case connected
    case disconnected
}

/// `sessions`: every live session at a moment, from a replay of the log.
struct Sessions: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "All live sessions at a moment (default now), computed by replaying the log.",
        discussion: """
            Live: connected, or disconnected with its expiry deadline still ahead. The stored \
            projection is not read; `verify` compares the two.
            """)

    @OptionGroup var ledger: LedgerOptions

    @Option(help: "A moment, ISO-8601 UTC (e.g. 2026-11-25T09:00:00Z); default now.")
    var at: String?

    @Option(help: "Only the sessions of this authentication name (case-insensitive).")
    var client: String?

    @Option(help: "Only sessions in this state: connected or disconnected.")
    var state: SessionStateFilter?

    @Flag(help: "JSON Lines, one session a line.")
    var json = false

    func run() throws {
        try audit {
            if ledger.isMerged { return try runMerged() }
            let now = currentTime()
            let atTime = try at.map { try parseTime($0, flag: "--at", now: now) }
            var out = OutputBuffer()
            try ledger.read { _, snapshot in
                var fold = AuditFold()
                defer { fold.release() }
                var window = ReplayWindow(time: atTime)
                let matcher = client.map(ClientMatcher.init)
                var clientKnown = false
                let outcome = try LogScan.run(snapshot, archive: ledger.archiveDirectory) { r in
                    if let matcher, !clientKnown, matcher.matches(r.authenticationName) { clientKnown = true }
                    if window.admits(r) { fold.apply(r) }
                }
                try outcome.requireIntact()
                let moment = atTime ?? max(now, outcome.head.timestamp)
                if let client, !clientKnown {
                    throw AuditError("unknown client '\(client)': no event of the ledger names it")
                }
                let live = fold.live(at: moment).filter { _, entry in
                    if let matcher, !matcher.matches(entry.owner) { return false }
                    switch state {
                    case .connected?: return entry.state == .connected
                    case .disconnected?: return entry.state == .disconnected
                    case nil: return true
                    }
                }
                if json {
                    for (name, entry) in live {
                        var j = JSONObject(into: out.bytes)
                        j.string("sessionName", name)
                        j.string("owner", bytes: entry.owner)
                        j.string("state", entry.state == .connected ? "connected" : "disconnected")
                        j.time("deadline", entry.state == .disconnected ? entry.deadline : nil)
                        j.int("sinceSeq", entry.sinceSequence)
                        j.time("sinceTime", entry.sinceTime)
                        j.int("firstSeq", entry.firstSequence)
                        j.int("connection", entry.connection)
                        j.int("protocolVersion", entry.protocolCode == 0 ? nil : entry.protocolCode)
                        j.bool("cleanStart", entry.cleanStart)
                        j.int("sessionExpiryInterval", entry.expiryInterval)
                        j.string("remoteAddress", bytes: entry.remoteAddress, nullIfEmpty: true)
                        out.bytes = j.close()
                        out.bytes.append(UInt8(ascii: "\n"))
                        out.flushIfLarge()
                    }
                    return
                }
                let rows = live.map { name, entry in
                    [
                        cell(name), cell(entry.owner), entry.state == .connected ? "connected" : "disconnected",
                        entry.state == .disconnected ? ISO8601Time.format(entry.deadline) : "-",
                        String(entry.sinceSequence), ISO8601Time.format(entry.sinceTime), String(entry.connection),
                        protocolName(entry.protocolCode), String(entry.expiryInterval), cell(entry.remoteAddress),
                    ]
                }
                renderTable(
                    ["SESSION", "OWNER", "STATE", "DEADLINE", "SINCE-SEQ", "SINCE-TIME", "CONN", "PROTO", "EXPIRY", "REMOTE"],
                    rows, into: &out)
                out.line("\(live.count) live session\(live.count == 1 ? "" : "s") at \(ISO8601Time.format(moment)) (through seq \(window.throughSequence))")
            }
            out.flush()
        }
    }

    /// Several nodes' ledgers: the sessions live after the merged history (by epoch) up to
    /// the moment, each with the node whose event put it in its state.
    func runMerged() throws {
        let now = currentTime()
        let atTime = try at.map { try parseTime($0, flag: "--at", now: now) }
        let moment = atTime ?? now
        let matcher = client.map { AuthenticationName(unchecked: $0) }
        let (sessions, known) = try ledger.mergedSessions(through: moment)
        if let matcher, !known.contains(matcher.key) {
            throw AuditError("unknown client '\(client!)': no event of the ledgers names it")
        }
        let live = sessions.filter { _, item in
            if case .disconnected(let deadline) = item.entry.state, deadline <= moment { return false }
            if let matcher, item.entry.owner != matcher { return false }
            switch state {
            case .connected?: return item.entry.state == .connected
            case .disconnected?: return item.entry.state != .connected
            case nil: return true
            }
        }.sorted { $0.key.value < $1.key.value }
        var out = OutputBuffer()
        func deadline(_ entry: SessionEntry) -> Int64? {
            if case .disconnected(let deadline) = entry.state { return deadline }
            return nil
        }
        if json {
            for (name, item) in live {
                var j = JSONObject()
                j.string("sessionName", name.value)
                j.string("owner", item.entry.owner.value)
                j.string("state", item.entry.state == .connected ? "connected" : "disconnected")
                j.time("deadline", deadline(item.entry))
                j.string("node", item.node)
                j.int("connection", item.entry.connection)
                j.int("sessionExpiryInterval", UInt64(item.entry.expiryInterval))
                out.line(String(decoding: j.close(), as: UTF8.self))
            }
        } else {
            let rows = live.map { name, item in
                [
                    name.value, item.entry.owner.value, item.entry.state == .connected ? "connected" : "disconnected",
                    deadline(item.entry).map(ISO8601Time.format) ?? "-", item.node, String(item.entry.connection),
                    String(item.entry.expiryInterval),
                ]
            }
            renderTable(["SESSION", "OWNER", "STATE", "DEADLINE", "NODE", "CONN", "EXPIRY"], rows, into: &out)
            out.line("\(live.count) live session\(live.count == 1 ? "" : "s") at \(ISO8601Time.format(moment)) across \(ledger.dataDirs.count) ledgers")
        }
        out.flush()
    }
}
