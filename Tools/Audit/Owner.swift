import LMDBStorage
import ArgumentParser
import SessionLedger

/// Which events a replay takes: all of them, or those through a sequence number or a
/// time. Like the library's `ReplayLimit`, the replay stops at the first event past it.
struct ReplayWindow {
    var sequence: UInt64?
    var time: Int64?
    private var closed = false
    /// The last event taken.
    private(set) var throughSequence: UInt64 = 0
    private(set) var throughTime: Int64?

    init(sequence: UInt64? = nil, time: Int64? = nil) {
        self.sequence = sequence
        self.time = time
    }

    mutating func admits(_ r: RawRecord) -> Bool {
        guard !closed else { return false }
        if let sequence, r.sequence > sequence { closed = true }
        if let time, r.timestamp > time { closed = true }
        guard !closed else { return false }
        throughSequence = r.sequence
        throughTime = r.timestamp
        return true
    }
}

/// `owner`: who held a session name at a moment.
struct Owner: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Who held a session at a time or sequence number (default now), in which state, from which event.",
        discussion: """
            States: connected; disconnected until DEADLINE (the session lives on until then); \
            free (never held, ended, or past its deadline). The event is the one that put the \
            session in that state. --at takes the events up to and including TIME.
            """)

    @OptionGroup var ledger: LedgerOptions

    @Option(help: "Session name (MQTT ClientID), exact.")
    var session: String

    @Option(help: "A moment, ISO-8601 UTC (e.g. 2026-11-25T09:00:00Z); default now.")
    var at: String?

    @Option(help: "Right after this event (sequence number).")
    var seq: UInt64?

    @Flag(help: "One JSON object.")
    var json = false

    func validate() throws {
        if at != nil && seq != nil { throw ValidationError("give at most one of --at and --seq") }
        if seq == 0 { throw ValidationError("--seq must be at least 1") }
    }

    func run() throws {
        try audit {
            if ledger.isMerged { return try runMerged() }
            let now = currentTime()
            let atTime = try at.map { try parseTime($0, flag: "--at", now: now) }
            var out = OutputBuffer()
            try ledger.read { _, snapshot in
                let name = PinnedBytes(session)
                var fold = AuditFold()
                defer { fold.release() }
                var window = ReplayWindow(sequence: seq, time: atTime)
                var known = false
                var seqTime: Int64?
                let outcome = try LogScan.run(snapshot, archive: ledger.archiveDirectory) { r in
                    if let seq, r.sequence == seq { seqTime = r.timestamp }
                    guard r.sessionName == name.key else {
                        _ = window.admits(r)
                        return
                    }
                    known = true
                    if window.admits(r) { fold.apply(r) }
                }
                try outcome.requireIntact()
                if let seq, seq > outcome.head.sequence {
                    throw AuditError("--seq \(seq) is past the end of the log (its last event is \(outcome.head.sequence))")
                }
                guard known else { throw AuditError("unknown session '\(session)': no event of the ledger names it") }
                // Default: every event, even one stamped after this machine's clock.
                let moment = atTime ?? seqTime ?? max(now, outcome.head.timestamp)
                let through = window.throughSequence

                let entry = fold.entry(named: name.key)
                var state = "free"
                var owner: ByteKey?
                var deadline: Int64?
                var note: String?
                var eventSequence: UInt64?
                if let entry, entry.sinceSequence > 0 {
                    eventSequence = entry.sinceSequence
                    switch entry.state {
                    case .connected:
                        state = "connected"
                        owner = entry.owner
                    case .disconnected where entry.deadline > moment:
                        state = "disconnected"
                        owner = entry.owner
                        deadline = entry.deadline
                    case .disconnected:
                        deadline = entry.deadline
                        note = "expired at \(ISO8601Time.format(entry.deadline)); its expired event was not recorded by then"
                    case .free:
                        break
                    }
                } else {
                    note = "never held up to then"
                }
                let event: RawRecord? = try eventSequence.flatMap { sequence in
                    try snapshot.withRecordBytes(at: sequence) { $0.flatMap(RawRecord.init) }
                }

                if json {
                    var j = JSONObject()
                    j.string("sessionName", session)
                    j.time("at", moment)
                    j.int("throughSeq", through)
                    j.string("state", state)
                    if let owner { j.string("owner", bytes: owner) } else { j.string("owner", nil) }
                    j.time("deadline", deadline)
                    j.string("note", note)
                    j.object("event", event.map { eventJSON($0) })
                    out.bytes = j.close()
                    out.bytes.append(UInt8(ascii: "\n"))
                    return
                }
                var rows: [[String]] = [
                    ["session", cell(session)],
                    ["at", "\(ISO8601Time.format(moment)) (through seq \(through))"],
                    ["state", state == "disconnected" ? "disconnected until \(ISO8601Time.format(deadline!))" : state],
                    ["owner", owner.map(cell) ?? "-"],
                ]
                if let note { rows.append(["note", note]) }
                if let event {
                    let reason = ReasonNames.reason(kind: event.kindCode, event.reasonCode).map { " \($0)" } ?? ""
                    rows.append(["event", "seq \(event.sequence) at \(ISO8601Time.format(event.timestamp)): \(ReasonNames.kind(event.kindCode))\(reason)"])
                    rows.append(["client", cell(event.authenticationName)])
                    rows.append(["connection", String(event.connection)])
                    rows.append(["remote", cell(event.remoteAddress)])
                }
                renderTable(["FIELD", "VALUE"], rows, into: &out)
            }
            out.flush()
        }
    }

    /// Several nodes' ledgers: the session's events of the merged history (by epoch) up to
    /// the moment, and the node whose event put it in its state.
    func runMerged() throws {
        guard seq == nil else { throw AuditError("--seq numbers one ledger's events: with several --data-dir give --at") }
        let now = currentTime()
        let atTime = try at.map { try parseTime($0, flag: "--at", now: now) }
        let events = try ledger.mergedHistory().filter { $0.event.sessionName.value == session }
        guard !events.isEmpty else { throw AuditError("unknown session '\(session)': no event of the ledgers names it") }
        let moment = atTime ?? max(now, events.map(\.event.timestamp).max() ?? now)
        var entry: SessionEntry?
        var cause: NodeEvent?
        for item in events where item.event.timestamp <= moment {
            if case .rejected = item.event.kind { continue }
            entry = SessionTransition.apply(item.event, to: entry)
            cause = item
        }
        var state = "free"
        var deadline: Int64?
        var note: String?
        switch entry?.state {
        case .connected: state = "connected"
        case .disconnected(let until) where until > moment:
            state = "disconnected"
            deadline = until
        case .disconnected(let until):
            deadline = until
            note = "expired at \(ISO8601Time.format(until)); its expired event was not recorded by then"
            entry = nil
        case nil:
            if cause == nil { note = "never held up to then" }
        }
        var out = OutputBuffer()
        if json {
            var j = JSONObject()
            j.string("sessionName", session)
            j.time("at", moment)
            j.string("state", state)
            j.string("owner", entry?.owner.value)
            j.time("deadline", deadline)
            j.string("note", note)
            j.string("node", cause?.node)
            j.int("epoch", cause?.event.epoch)
            out.bytes = j.close()
            out.bytes.append(UInt8(ascii: "\n"))
        } else {
            var rows: [[String]] = [
                ["session", session], ["at", ISO8601Time.format(moment)],
                ["state", state == "disconnected" ? "disconnected until \(ISO8601Time.format(deadline!))" : state],
                ["owner", entry?.owner.value ?? "-"],
            ]
            if let note { rows.append(["note", note]) }
            if let cause {
                let e = cause.event
                rows.append(["event", "node \(cause.node) epoch \(e.epoch) seq \(e.sequence) at \(ISO8601Time.format(e.timestamp)): \(e.kind.name)\(e.kind.reasonName.map { " \($0)" } ?? "")"])
                rows.append(["client", e.authenticationName.value])
                rows.append(["connection", String(e.connection)])
            }
            renderTable(["FIELD", "VALUE"], rows, into: &out)
        }
        out.flush()
    }
}
