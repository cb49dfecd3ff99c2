import ArgumentParser
import CustodyConfig
import Foundation
import LMDBStorage
import Routing
import SessionLedger

/// `routes`: what each route's outbox holds (events not yet delivered nor dead-lettered) and
/// the dead-letter entries of the routes that write them to a directory.
struct Routes: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Each route's outbox (events waiting for delivery, oldest first) and its dead-letter directory's entries.",
        discussion: """
            The outboxes are read from DATA-DIR/broker (read-only; safe while custody runs). \
            Dead-letter directories come from --config (each route's deadLetter.directory) and \
            --dead-letter; a route that dead-letters to a topic has its entries there instead.
            """)

    @OptionGroup var ledger: LedgerOptions

    @Option(help: "custody's configuration file: its routes' dead-letter directories.")
    var config: String?

    @Option(help: ArgumentHelp("A dead-letter directory to list (repeatable).", valueName: "directory"))
    var deadLetter: [String] = []

    @Option(help: "Only this route.")
    var route: String?

    @Option(help: "Events and entries shown per route (0: all).")
    var limit = 20

    @Flag(help: "JSON Lines: one object per outbox event and per dead-letter entry.")
    var json = false

    func run() throws {
        try audit {
            var directories = deadLetter
            if let config {
                let configuration: CustodyConfiguration
                do {
                    configuration = try CustodyConfiguration.load(file: config)
                } catch {
                    throw AuditError("\(error)")
                }
                for route in configuration.routes where self.route == nil || route.name == self.route {
                    if case .directory(let directory) = route.deadLetter { directories.append(directory) }
                }
            }
            var out = OutputBuffer()
            try outboxes(&out)
            for directory in directories { try deadLetters(directory, &out) }
            out.flush()
        }
    }

    private func outboxes(_ out: inout OutputBuffer) throws {
        let directory = (ledger.dataDir as NSString).appendingPathComponent("broker")
        let store: BrokerStore
        do {
            store = try BrokerStore(directory: directory, options: BrokerStoreOptions(readOnly: true))
        } catch {
            throw AuditError("cannot open the broker store \(directory): \(error)")
        }
        defer { store.close() }
        var byRoute: [(String, [OutboxRecord])] = []
        for record in try OutboxRecord.all(in: store) where route == nil || record.route == route {
            if byRoute.last?.0 == record.route { byRoute[byRoute.count - 1].1.append(record) } else { byRoute.append((record.route, [record])) }
        }
        if !json, byRoute.isEmpty { out.line("outbox: empty\(route.map { " (route \($0))" } ?? "")") }
        for (name, records) in byRoute {
            let bytes = records.reduce(0) { $0 + $1.size }
            if !json {
                out.line("outbox \(name): \(records.count) events, \(bytes) bytes, oldest accepted \(ISO8601Time.format(records[0].acceptedAt))")
            }
            for record in limit == 0 ? records[...] : records.prefix(limit) {
                let event = (try? JSONSerialization.jsonObject(with: Data(StoredEvent.json(of: record)))) as? [String: Any] ?? [:]
                if json {
                    var j = JSONObject()
                    j.string("route", name)
                    j.int("number", record.number)
                    j.time("acceptedAt", record.acceptedAt)
                    j.int("attempts", Int(record.attempts))
                    j.string("id", event["id"] as? String)
                    j.string("type", event["type"] as? String)
                    j.string("subject", event["subject"] as? String)
                    j.int("bytes", record.event.count)
                    out.line(String(decoding: j.close(), as: UTF8.self))
                } else {
                    out.line("  #\(record.number) \(ISO8601Time.format(record.acceptedAt)) \(event["type"] as? String ?? "?") \(event["subject"] as? String ?? "-") id=\(event["id"] as? String ?? "?")\(record.attempts > 0 ? " failed_attempts=\(record.attempts)" : "")")
                }
                out.flushIfLarge()
            }
            if !json, limit > 0, records.count > limit { out.line("  ... \(records.count - limit) more (--limit 0 shows all)") }
        }
    }

    private func deadLetters(_ directory: String, _ out: inout OutputBuffer) throws {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            if !json { out.line("dead-letter \(directory): none (no such directory)") }
            return
        }
        let files = names.filter { $0.hasSuffix(".json") && (route == nil || $0.hasPrefix(route! + "-")) }.sorted()
        if !json { out.line("dead-letter \(directory): \(files.count) entries") }
        for file in limit == 0 ? files[...] : files.prefix(limit) {
            let path = (directory as NSString).appendingPathComponent(file)
            guard let data = FileManager.default.contents(atPath: path),
                let entry = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            else {
                if !json { out.line("  \(file): not a dead-letter entry") }
                continue
            }
            let event = entry["event"] as? [String: Any] ?? [:]
            if json {
                var j = JSONObject()
                j.string("deadLetter", path)
                j.string("route", entry["route"] as? String)
                j.string("reason", entry["reason"] as? String)
                j.int("attempts", entry["attempts"] as? Int)
                j.int("lastStatus", entry["lastStatus"] as? Int)
                j.string("error", entry["error"] as? String)
                j.string("deadLetteredAt", entry["deadLetteredAt"] as? String)
                j.string("id", event["id"] as? String)
                j.string("subject", event["subject"] as? String)
                out.line(String(decoding: j.close(), as: UTF8.self))
            } else {
                let status = (entry["lastStatus"] as? Int).map(String.init) ?? "-"
                out.line("  \(file) \(entry["deadLetteredAt"] as? String ?? "?") \(entry["reason"] as? String ?? "?") attempts=\(entry["attempts"] as? Int ?? 0) last_status=\(status) subject=\(event["subject"] as? String ?? "-") id=\(event["id"] as? String ?? "?") error=\(entry["error"] as? String ?? "-")")
            }
            out.flushIfLarge()
        }
        if !json, limit > 0, files.count > limit { out.line("  ... \(files.count - limit) more (--limit 0 shows all)") }
    }
}
