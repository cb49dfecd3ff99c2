import ArgumentParser
import SessionLedger

/// `stats`: the ledger in numbers.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Events by kind and reason, session names, clients, rejections, live sessions, log size, first and last time.")

    @OptionGroup var ledger: LedgerOptions

    @Flag(help: "One JSON object.")
    var json = false

    func run() throws {
        try audit {
            guard !ledger.isMerged else { throw AuditError("stats reads one ledger: give one --data-dir") }
            let now = currentTime()
            var out = OutputBuffer()
            try ledger.read { store, snapshot in
                var fold = AuditFold()
                defer { fold.release() }
                var byReason = [[Int]](repeating: [Int](repeating: 0, count: 256), count: 5)
                var firstTime: Int64?
                var recordBytes = 0
                let outcome = try LogScan.run(snapshot, archive: ledger.archiveDirectory) { r in
                    if firstTime == nil { firstTime = r.timestamp }
                    recordBytes += r.bytes.count
                    if r.kindCode < 5 { byReason[Int(r.kindCode)][Int(r.reasonCode)] += 1 }
                    if r.authenticationName.count > 0 { _ = fold.clients.id(of: r.authenticationName) }
                    fold.apply(r)
                }
                try outcome.requireIntact()
                let head = outcome.head
                let liveAt = max(now, head.timestamp)
                let live = fold.live(at: liveAt)
                let connected = live.filter { $0.entry.state == .connected }.count

                var kinds: [(String, Int)] = []
                var reasons: [(String, Int)] = []
                for kind in UInt8(1)...4 {
                    kinds.append((ReasonNames.kind(kind), byReason[Int(kind)].reduce(0, +)))
                    for code in 0..<256 where byReason[Int(kind)][code] > 0 && kind != RawRecord.connected {
                        let reason = ReasonNames.reason(kind: kind, UInt8(code)) ?? "\(code)"
                        reasons.append(("\(ReasonNames.kind(kind)).\(reason)", byReason[Int(kind)][code]))
                    }
                }
                let rejections = byReason[Int(RawRecord.rejected)].reduce(0, +)

                if json {
                    var j = JSONObject()
                    j.int("events", head.sequence)
                    j.time("firstTime", firstTime)
                    j.time("lastTime", head.sequence == 0 ? nil : head.timestamp)
                    head.hash.withBytes { j.hex("head", $0) }
                    var k = JSONObject()
                    for (name, count) in kinds { k.int(name, count) }
                    j.object("byKind", k.close())
                    var r = JSONObject()
                    for (name, count) in reasons { r.int(name, count) }
                    j.object("byReason", r.close())
                    j.int("rejections", rejections)
                    j.int("sessionNames", fold.entries.count)
                    j.int("clients", fold.clients.count)
                    j.time("liveAt", liveAt)
                    j.int("liveConnected", connected)
                    j.int("liveDisconnected", live.count - connected)
                    j.int("logBytes", recordBytes)
                    j.int("dataFileBytes", store.dataFileSize)
                    out.bytes = j.close()
                    out.bytes.append(UInt8(ascii: "\n"))
                    return
                }
                var rows: [[String]] = [
                    ["events", String(head.sequence)],
                    ["first time", firstTime.map(ISO8601Time.format) ?? "-"],
                    ["last time", head.sequence == 0 ? "-" : ISO8601Time.format(head.timestamp)],
                    ["head", "\(head.hash)"],
                ]
                for (name, count) in kinds { rows.append(["  \(name)", String(count)]) }
                for (name, count) in reasons { rows.append(["    \(name)", String(count)]) }
                rows += [
                    ["rejections", String(rejections)],
                    ["session names", String(fold.entries.count)],
                    ["clients", String(fold.clients.count)],
                    ["live now: connected", String(connected)],
                    ["live now: disconnected", String(live.count - connected)],
                    ["log bytes (records)", String(recordBytes)],
                    ["data file bytes", String(store.dataFileSize)],
                ]
                renderTable(["METRIC", "VALUE"], rows, into: &out)
            }
            out.flush()
        }
    }
}
