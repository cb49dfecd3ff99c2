import ArgumentParser
import SessionLedger

/// `history`: every event of one session name, or of one client, in log order.
struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Every event of a session name, or of a client (authentication name), in order.",
        discussion: """
            --session S: every event naming session S (exact, case-sensitive), whoever caused it. \
            --client A: every event of authentication name A (case-insensitive): its connects, \
            disconnects, rejections, and the takeovers and expiries of its sessions.
            """)

    @OptionGroup var ledger: LedgerOptions

    @Option(help: "Session name (MQTT ClientID), exact.")
    var session: String?

    @Option(help: "Authentication name, case-insensitive.")
    var client: String?

    @Flag(help: "JSON Lines, one event a line (the export fields).")
    var json = false

    func validate() throws {
        guard (session == nil) != (client == nil) else {
            throw ValidationError("give exactly one of --session and --client")
        }
    }

    func run() throws {
        try audit {
            if ledger.isMerged { return try runMerged() }
            var out = OutputBuffer()
            try ledger.read { _, snapshot in
                let sessionName = session.map(PinnedBytes.init)
                let clientMatcher = client.map(ClientMatcher.init)
                var rows: [[String]] = []
                var lines: [UInt8] = []
                var matched = 0
                let outcome = try LogScan.run(snapshot, archive: ledger.archiveDirectory) { r in
                    let match = if let sessionName { r.sessionName == sessionName.key } else { clientMatcher!.matches(r.authenticationName) }
                    guard match else { return }
                    matched += 1
                    if json {
                        lines = eventJSON(r, into: lines)
                        lines.append(UInt8(ascii: "\n"))
                    } else {
                        rows.append(eventRow(r))
                    }
                }
                try outcome.requireIntact()
                guard matched > 0 else {
                    if let session { throw AuditError("unknown session '\(session)': no event of the ledger names it") }
                    throw AuditError("unknown client '\(client!)': no event of the ledger names it")
                }
                if json {
                    out.bytes = lines
                } else {
                    renderTable(eventColumns, rows, into: &out)
                }
            }
            out.flush()
        }
    }

    /// Several nodes' ledgers: the matching events of the merged history, by epoch.
    func runMerged() throws {
        let matcher = client.map { AuthenticationName(unchecked: $0) }
        let items = try ledger.mergedHistory().filter { item in
            if let session { return item.event.sessionName.value == session }
            return item.event.authenticationName == matcher!
        }
        guard !items.isEmpty else {
            if let session { throw AuditError("unknown session '\(session)': no event of the ledgers names it") }
            throw AuditError("unknown client '\(client!)': no event of the ledgers names it")
        }
        MergedOutput.print(items, json: json)
    }
}
