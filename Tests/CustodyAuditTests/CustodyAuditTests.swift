import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import SessionLedger
import Testing

// `custody-audit` as users run it: the built binary, as a child process, against a ledger
// written through the real `LMDBSessionLedger` (see `ScriptedLedger` for the events).

private let t0 = ScriptedLedger.t0
private func at(_ seconds: Int64) -> Int64 { ScriptedLedger.at(seconds) }

private let exportFields: Set<String> = [
    "seq", "time", "kind", "reason", "authenticationName", "sessionName", "connection", "protocolVersion",
    "cleanStart", "sessionExpiryInterval", "remoteAddress", "hash",
]

/// Runs `body` with a fresh scripted ledger and removes it afterwards.
private func withScript(_ body: (ScriptedLedger) async throws -> Void) async throws {
    let script = try await ScriptedLedger.make()
    defer { script.remove() }
    try await body(script)
}

private func seqs(_ objects: [[String: Any]]) -> [Int] { objects.compactMap { $0["seq"] as? Int } }

/// The answer is a one-line error on stderr and exit status 1, with nothing on stdout.
private func expectBadInput(_ run: AuditRun, mentioning words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(run.status == 1, "exit status \(run.status), stderr: \(run.stderr)", sourceLocation: sourceLocation)
    #expect(run.stdout.isEmpty, "stdout: \(run.stdout)", sourceLocation: sourceLocation)
    let lines = run.stderr.split(separator: "\n")
    #expect(lines.count == 1, "stderr: \(run.stderr)", sourceLocation: sourceLocation)
    #expect(run.stderr.hasPrefix("custody-audit: "), "stderr: \(run.stderr)", sourceLocation: sourceLocation)
    for word in words {
        #expect(run.stderr.contains(word), "'\(word)' not in: \(run.stderr)", sourceLocation: sourceLocation)
    }
}

@Suite("custody-audit")
struct CustodyAuditTests {
    // MARK: history

    @Test("history --session: every event naming the session, in order, with reason, connection and address")
    func historyOfSession() async throws {
        try await withScript { script in
            let run = try await runAudit(["history", "--session", "s1", "--json", "--data-dir", script.directory])
            #expect(run.status == 0, "\(run.stderr)")
            let events = try run.jsonLines()
            #expect(seqs(events) == [1, 3, 4, 5, 8, 10])
            for event in events { #expect(Set(event.keys) == exportFields) }
            #expect(events.map { $0["kind"] as? String } == ["connected", "disconnected", "connected", "rejected", "disconnected", "expired"])
            #expect(events.map { $0["reason"] as? String } == [
                nil, "sessionTakenOver", nil, "ownedByAnotherClient", "clientInitiatedDisconnect", "sessionExpired",
            ])
            #expect(events.map { $0["authenticationName"] as? String } == ["alice", "alice", "Alice", "bob", "Alice", "Alice"])
            #expect(events[0]["remoteAddress"] as? String == "10.0.0.1:1001")
            #expect(events[1]["remoteAddress"] is NSNull)
            #expect(events[2]["remoteAddress"] as? String == "10.0.0.1:1003")
            #expect(events[0]["connection"] as? Int == Int(script.connections["alice-s1"]!))
            #expect(events[1]["connection"] as? Int == Int(script.connections["alice-s1"]!))
            #expect(events[2]["connection"] as? Int == Int(script.connections["Alice-s1"]!))
            #expect(events[3]["connection"] as? Int == Int(script.connections["bob-s1"]!))
            #expect(events.map { $0["time"] as? String } == [at(0), at(20), at(20), at(30), at(60), at(700)].map(iso))
            #expect(events[0]["protocolVersion"] as? Int == 5)
            #expect(events[4]["sessionExpiryInterval"] as? Int == 600)

            let table = try await runAudit(["history", "--session", "s1", "--data-dir", script.directory])
            #expect(table.status == 0)
            #expect(table.lines.count == 7)
            #expect(table.lines[0].hasPrefix("SEQ  TIME"))
            #expect(table.lines[0].contains("REASON") && table.lines[0].contains("CONN") && table.lines[0].contains("REMOTE"))
            let takeover = table.lines[2].split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            #expect(takeover == [
                "3", iso(at(20)), "disconnected", "sessionTakenOver", "alice", "s1",
                String(script.connections["alice-s1"]!), "5.0", "600", "-",
            ])
        }
    }

    @Test("history --client: every event of the authentication name, case-insensitively")
    func historyOfClient() async throws {
        try await withScript { script in
            let run = try await runAudit(["history", "--client", "ALICE", "--json", "--data-dir", script.directory])
            #expect(run.status == 0, "\(run.stderr)")
            let events = try run.jsonLines()
            #expect(seqs(events) == [1, 3, 4, 6, 7, 8, 10, 11, 12])
            #expect(events.map { $0["sessionName"] as? String } == ["s1", "s1", "s1", "s3", ScriptedLedger.marker, "s1", "s1", "s3", "s3"])
            #expect(events[4]["reason"] as? String == "quotaExceeded")
            #expect(events[7]["reason"] as? String == "brokerRestart")
            #expect(events[8]["reason"] as? String == "expiredWhileBrokerDown")

            let dave = try await runAudit(["history", "--client", "dave", "--json", "--data-dir", script.directory])
            let rejected = try dave.jsonLines()
            #expect(seqs(rejected) == [14])
            #expect(rejected.first?["sessionName"] as? String == "")
            #expect(rejected.first?["reason"] as? String == "invalidSessionName")
        }
    }

    // MARK: owner

    private func owner(_ script: ScriptedLedger, _ extra: [String]) async throws -> [String: Any] {
        let run = try await runAudit(["owner", "--session", "s1", "--json", "--data-dir", script.directory] + extra)
        #expect(run.status == 0, "\(run.stderr)")
        return try run.json()
    }

    private func eventSeq(_ answer: [String: Any]) -> Int? {
        (answer["event"] as? [String: Any])?["seq"] as? Int
    }

    @Test("owner --at between events: state and the event it came from")
    func ownerAtTimes() async throws {
        try await withScript { script in
            var answer = try await owner(script, ["--at", iso(at(0) - 1)])
            #expect(answer["state"] as? String == "free")
            #expect(answer["owner"] is NSNull)
            #expect(answer["event"] is NSNull)
            #expect(answer["throughSeq"] as? Int == 0)

            answer = try await owner(script, ["--at", iso(at(5))])
            #expect(answer["state"] as? String == "connected")
            #expect(answer["owner"] as? String == "alice")
            #expect(eventSeq(answer) == 1)
            #expect(answer["at"] as? String == iso(at(5)))
            #expect(answer["throughSeq"] as? Int == 1)

            // One microsecond before the takeover, and at it (both of its events count).
            answer = try await owner(script, ["--at", iso(at(20) - 1)])
            #expect(answer["owner"] as? String == "alice")
            #expect(eventSeq(answer) == 1)
            answer = try await owner(script, ["--at", iso(at(20))])
            #expect(answer["state"] as? String == "connected")
            #expect(answer["owner"] as? String == "Alice")
            #expect(eventSeq(answer) == 4)
            #expect((answer["event"] as? [String: Any])?["connection"] as? Int == Int(script.connections["Alice-s1"]!))

            // Disconnected, alive until its deadline.
            answer = try await owner(script, ["--at", iso(at(65))])
            #expect(answer["state"] as? String == "disconnected")
            #expect(answer["owner"] as? String == "Alice")
            #expect(answer["deadline"] as? String == iso(at(660)))
            #expect(eventSeq(answer) == 8)

            // Past the deadline but before the expired event: free already.
            answer = try await owner(script, ["--at", iso(at(665))])
            #expect(answer["state"] as? String == "free")
            #expect(answer["owner"] is NSNull)
            #expect(eventSeq(answer) == 8)
            #expect((answer["note"] as? String)?.contains(iso(at(660))) == true)

            answer = try await owner(script, ["--at", iso(at(700))])
            #expect(answer["state"] as? String == "free")
            #expect(eventSeq(answer) == 10)

            // Default: now.
            answer = try await owner(script, [])
            #expect(answer["state"] as? String == "free")
            #expect(eventSeq(answer) == 10)
            #expect(answer["throughSeq"] as? Int == 14)
        }
    }

    @Test("owner --seq: the state right after that event; fractional --at is accepted")
    func ownerAtSequence() async throws {
        try await withScript { script in
            var answer = try await owner(script, ["--seq", "3"])
            // After the takeover's first event the old connection's session waits for its client.
            #expect(answer["state"] as? String == "disconnected")
            #expect(answer["owner"] as? String == "alice")
            #expect(answer["deadline"] as? String == iso(at(620)))
            #expect(answer["at"] as? String == iso(at(20)))
            #expect(eventSeq(answer) == 3)

            answer = try await owner(script, ["--seq", "4"])
            #expect(answer["owner"] as? String == "Alice")

            answer = try await owner(script, ["--at", "2025-03-01T08:00:20.000000Z"])
            #expect(eventSeq(answer) == 4)
            answer = try await owner(script, ["--at", "2025-03-01T08:00:19.999999Z"])
            #expect(eventSeq(answer) == 1)
            answer = try await owner(script, ["--at", "2025-03-01T08:01:05.5Z"])
            #expect(answer["at"] as? String == iso(at(65) + 500_000))
            #expect(answer["state"] as? String == "disconnected")

            let s3 = try await runAudit(["owner", "--session", "s3", "--at", iso(at(900)), "--data-dir", script.directory])
            #expect(s3.status == 0)
            #expect(s3.stdout.contains("disconnected until \(iso(at(1400)))"))
            #expect(s3.stdout.contains("brokerRestart"))
            #expect(s3.stdout.contains("alice"))
        }
    }

    // MARK: sessions

    private func sessions(_ script: ScriptedLedger, _ extra: [String]) async throws -> [[String: Any]] {
        let run = try await runAudit(["sessions", "--json", "--data-dir", script.directory] + extra)
        #expect(run.status == 0, "\(run.stderr)")
        return try run.jsonLines()
    }

    private func names(_ sessions: [[String: Any]]) -> [String] { sessions.compactMap { $0["sessionName"] as? String } }

    @Test("sessions at moments between events, filtered by client and state")
    func sessionsAtTimes() async throws {
        try await withScript { script in
            var live = try await sessions(script, ["--at", iso(at(45))])
            #expect(names(live) == ["s1", "s2", "s3"])
            #expect(live.map { $0["owner"] as? String } == ["Alice", "bob", "alice"])
            #expect(live.map { $0["state"] as? String } == ["connected", "connected", "connected"])
            #expect(live[0]["firstSeq"] as? Int == 1)
            #expect(live[0]["sinceSeq"] as? Int == 4)
            #expect(live[0]["remoteAddress"] as? String == "10.0.0.1:1003")
            #expect(live[1]["protocolVersion"] as? Int == 4)
            #expect(live[1]["cleanStart"] as? Bool == true)

            live = try await sessions(script, ["--at", iso(at(45)), "--client", "ALICE"])
            #expect(names(live) == ["s1", "s3"])

            live = try await sessions(script, ["--at", iso(at(65)), "--state", "disconnected"])
            #expect(names(live) == ["s1"])
            #expect(live[0]["deadline"] as? String == iso(at(660)))
            live = try await sessions(script, ["--at", iso(at(65)), "--state", "connected"])
            #expect(names(live) == ["s2", "s3"])

            // s2 ended with its connection (expiry 0); s1 is past its deadline.
            live = try await sessions(script, ["--at", iso(at(665))])
            #expect(names(live) == ["s3"])

            live = try await sessions(script, ["--at", iso(at(900))])
            #expect(names(live) == ["s3"])
            #expect(live[0]["state"] as? String == "disconnected")
            #expect(live[0]["deadline"] as? String == iso(at(1400)))

            live = try await sessions(script, [])
            #expect(names(live) == ["s5"])
            #expect(live[0]["owner"] as? String == "carol")
            #expect(live[0]["remoteAddress"] as? String == "[::1]:2001")

            let table = try await runAudit(["sessions", "--at", iso(at(45)), "--data-dir", script.directory])
            #expect(table.status == 0)
            #expect(table.lines.first?.hasPrefix("SESSION  OWNER") == true)
            #expect(table.lines.count == 5)
            #expect(table.lines.last == "3 live sessions at \(iso(at(45))) (through seq 6)")
        }
    }

    @Test("sessions agrees with the library's replay at every event")
    func sessionsMatchLibraryReplay() async throws {
        try await withScript { script in
            let store = try LedgerStore(directory: script.directory, options: LedgerStoreOptions(readOnly: true))
            defer { store.close() }
            let times = try store.read { snapshot in
                var times: [Int64] = []
                try snapshot.forEachRecord { _, bytes in
                    let time = try EventRecordFormat.decode(bytes).event.timestamp
                    times += [time - 1, time, time + 1]
                    return true
                }
                return Array(Set(times)).sorted()
            }
            for time in times {
                let projection = try store.read { try $0.replay(through: .time(time)).0 }
                let expected = projection.sessions.filter { !$0.value.hasExpired(at: time) }
                let live = try await sessions(script, ["--at", iso(time)])
                #expect(Set(names(live)) == Set(expected.keys.map(\.value)), "at \(iso(time))")
                for session in live {
                    let name = SessionName(unchecked: session["sessionName"] as! String)
                    let entry = try #require(expected[name])
                    #expect(session["owner"] as? String == entry.owner.value)
                    #expect(session["connection"] as? Int == Int(entry.connection))
                    #expect(session["sinceSeq"] as? Int == Int(entry.sinceSequence))
                    #expect(session["firstSeq"] as? Int == Int(entry.firstSequence))
                    #expect(session["state"] as? String == (entry.isConnected ? "connected" : "disconnected"))
                    #expect(session["deadline"] as? String == entry.deadline.map(iso))
                }
            }
        }
    }

    // MARK: verify

    @Test("verify: ok with the events and the head hash")
    func verifyIntact() async throws {
        try await withScript { script in
            let run = try await runAudit(["verify", "--data-dir", script.directory])
            #expect(run.status == 0)
            #expect(run.stdout == "verify: ok events=14 head=\(script.head.hash.hex)\n")
            let json = try await runAudit(["verify", "--json", "--data-dir", script.directory]).json()
            #expect(json["ok"] as? Bool == true)
            #expect(json["events"] as? Int == 14)
            #expect(json["head"] as? String == script.head.hash.hex)
            #expect(json["firstBadSeq"] is NSNull)
        }
    }

    @Test("verify fails at the record edited on disk; other subcommands refuse to answer")
    func verifyEditedRecord() async throws {
        try await withScript { script in
            let file = script.directory + "/data.mdb"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            let found = occurrences(of: Array(ScriptedLedger.marker.utf8), in: bytes)
            try #require(!found.isEmpty, "the marker is not in the data file")
            // Stale copies of the page may survive in free pages; edit them all.
            for offset in found { bytes[offset] = UInt8(ascii: "S") }
            try Data(bytes).write(to: URL(fileURLWithPath: file))

            let run = try await runAudit(["verify", "--data-dir", script.directory])
            #expect(run.status == 1)
            #expect(run.stdout.hasPrefix("verify: FAILED first_bad_seq=7 events_ok=6 "), "\(run.stdout)")
            #expect(run.stdout.contains("record 7 does not match its hash chain"))
            #expect(run.lines.count == 1)

            let json = try await runAudit(["verify", "--json", "--data-dir", script.directory])
            #expect(json.status == 1)
            #expect(try json.json()["firstBadSeq"] as? Int == 7)

            // The library agrees.
            let store = try LedgerStore(directory: script.directory, options: LedgerStoreOptions(readOnly: true))
            #expect(try store.read { try $0.verify() }.problem == .hashMismatch(sequence: 7))
            store.close()

            for arguments in [
                ["history", "--session", "s1"], ["owner", "--session", "s1", "--at", iso(at(5))],
                ["sessions"], ["stats"], ["history", "--client", "carol"],
            ] {
                expectBadInput(try await runAudit(arguments + ["--data-dir", script.directory]), mentioning: ["damaged", "record 7"])
            }
            // export prints the records before the damage (each checked), then stops with an error.
            let export = try await runAudit(["export", "--data-dir", script.directory])
            #expect(export.status == 1)
            #expect(seqs(try export.jsonLines()) == [1, 2, 3, 4, 5, 6])
            #expect(export.stderr.hasPrefix("custody-audit: ") && export.stderr.contains("record 7"))
            // An export that starts after the damaged record checks its own range only.
            let tail = try await runAudit(["export", "--from", "9", "--data-dir", script.directory])
            #expect(tail.status == 0)
            #expect(seqs(try tail.jsonLines()) == [9, 10, 11, 12, 13, 14])
        }
    }

    @Test("verify names a record whose format is broken")
    func verifyMalformedRecord() async throws {
        try await withScript { script in
            let file = script.directory + "/data.mdb"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            // Record 7: 40-byte header, then "ALICE", then the marker. Set its kind byte to 9.
            let found = occurrences(of: Array(("ALICE" + ScriptedLedger.marker).utf8), in: bytes)
            try #require(!found.isEmpty)
            for offset in found { bytes[offset - 40 + 1] = 9 }
            try Data(bytes).write(to: URL(fileURLWithPath: file))

            let run = try await runAudit(["verify", "--data-dir", script.directory])
            #expect(run.status == 1)
            #expect(run.stdout.hasPrefix("verify: FAILED first_bad_seq=7 "), "\(run.stdout)")
            #expect(run.stdout.contains("record 7 is unreadable: unknown event kind 9"))
        }
    }

    @Test("verify finds a stored projection that disagrees with the log")
    func verifyEditedProjection() async throws {
        try await withScript { script in
            // carol's live session s5: [owner length][name length] owner name, 48 bytes into the entry.
            let pattern = littleEndian16(5) + littleEndian16(2) + Array("carols5".utf8)
            let file = script.directory + "/data.mdb"
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
            let found = occurrences(of: pattern, in: bytes)
            try #require(!found.isEmpty)
            for offset in found where offset >= 48 { bytes[offset - 48 + 8] &+= 1 }  // connection number
            try Data(bytes).write(to: URL(fileURLWithPath: file))

            let run = try await runAudit(["verify", "--data-dir", script.directory])
            #expect(run.status == 1)
            #expect(run.stdout.hasPrefix("verify: FAILED events_ok=14 problem=\"stored projection disagrees with the log: session s5"), "\(run.stdout)")
            // The log itself is intact: the audit questions still have answers.
            #expect(try await runAudit(["history", "--session", "s5", "--data-dir", script.directory]).status == 0)
        }
    }

    // MARK: export

    @Test("export: JSON Lines with the documented fields, chained hashes, --from and --to")
    func export() async throws {
        try await withScript { script in
            let run = try await runAudit(["export", "--data-dir", script.directory])
            #expect(run.status == 0, "\(run.stderr)")
            let events = try run.jsonLines()
            #expect(seqs(events) == Array(1...14))
            for event in events { #expect(Set(event.keys) == exportFields) }
            // Field order is stable too.
            #expect(run.lines[0].hasPrefix("{\"seq\":1,\"time\":\"\(iso(at(0)))\",\"kind\":\"connected\",\"reason\":null,\"authenticationName\":\"alice\",\"sessionName\":\"s1\","))

            let store = try LedgerStore(directory: script.directory, options: LedgerStoreOptions(readOnly: true))
            defer { store.close() }
            try store.read { snapshot in
                for event in events {
                    let record = try #require(try snapshot.record(at: UInt64(event["seq"] as! Int)))
                    #expect(event["hash"] as? String == record.hash.hex)
                    #expect(event["authenticationName"] as? String == record.event.authenticationName.value)
                    #expect(event["sessionName"] as? String == record.event.sessionName.value)
                    #expect(event["connection"] as? Int == Int(record.event.connection))
                    #expect(event["time"] as? String == iso(record.event.timestamp))
                    #expect(event["kind"] as? String == record.event.kind.name)
                    #expect(event["reason"] as? String == record.event.kind.reasonName)
                    #expect(event["cleanStart"] as? Bool == record.event.cleanStart)
                    #expect(event["sessionExpiryInterval"] as? Int == Int(record.event.expiryInterval))
                }
            }
            #expect(events[13]["sessionName"] as? String == "")
            #expect(events[1]["protocolVersion"] as? Int == 4)

            let range = try await runAudit(["export", "--from", "4", "--to", "6", "--data-dir", script.directory])
            #expect(range.status == 0)
            #expect(seqs(try range.jsonLines()) == [4, 5, 6])
            let end = try await runAudit(["export", "--from", "15", "--data-dir", script.directory])
            #expect(end.status == 0 && end.stdout.isEmpty)
        }
    }

    @Test("export --follow prints events as they are committed, while the ledger is open for writing")
    func exportFollow() async throws {
        try await withScript { script in
            let output = temporaryPath("follow")
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: output) }
            let child = Process()
            child.executableURL = try auditExecutable()
            child.arguments = ["export", "--follow", "--from", "12", "--data-dir", script.directory, "--poll-milliseconds", "20"]
            child.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            child.standardError = FileHandle.nullDevice
            try child.run()
            defer {
                if child.isRunning {
                    child.terminate()
                    child.waitUntilExit()
                }
            }

            /// Waits (off the pool) until the child printed `count` lines, and parses them.
            func waitForLines(_ count: Int) async throws -> [[String: Any]] {
                let lines = try await offPool { () throws -> [String] in
                    let deadline = Date().addingTimeInterval(20)
                    while true {
                        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                        let lines = text.split(separator: "\n")
                        if lines.count >= count { return lines.map(String.init) }
                        guard Date() < deadline, child.isRunning else {
                            throw AuditTestError.timedOut("export --follow printed \(lines.count) of \(count) lines")
                        }
                        usleep(10_000)
                    }
                }
                return try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
            }
            #expect(seqs(try await waitForLines(3)) == [12, 13, 14])

            // The broker starts again (recovery disconnects s5) and takes a new claim.
            script.clock.set(at(3000))
            let ledger = try LMDBSessionLedger(directory: script.directory, policy: ScriptedLedger.policy, clock: script.clock.ledgerClock)
            defer { ledger.close() }
            _ = try await ledger.claim(ClaimRequest(
                authenticationName: AuthenticationName(unchecked: "erin"), sessionName: SessionName(unchecked: "s6"),
                connection: ledger.nextConnectionNumber(), remoteAddress: "10.0.0.5:5000"))
            let events = try await waitForLines(5)
            #expect(seqs(events) == [12, 13, 14, 15, 16])
            #expect(events[3]["reason"] as? String == "brokerRestart")
            #expect(events[4]["sessionName"] as? String == "s6")
            #expect(events[4]["remoteAddress"] as? String == "10.0.0.5:5000")
            #expect(events[4]["hash"] as? String == ledger.head.hash.hex)
            #expect(child.isRunning)
            child.terminate()
            try await offPool { child.waitUntilExit() }
        }
    }

    @Test("export --follow --to stops once the last requested event is printed")
    func exportFollowTo() async throws {
        try await withScript { script in
            try await offPool {
                let child = Process()
                child.executableURL = try auditExecutable()
                let output = temporaryPath("follow-to")
                _ = FileManager.default.createFile(atPath: output, contents: nil)
                defer { try? FileManager.default.removeItem(atPath: output) }
                child.arguments = ["export", "--follow", "--from", "14", "--to", "15", "--data-dir", script.directory, "--poll-milliseconds", "20"]
                child.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
                try child.run()
                usleep(100_000)
                #expect(child.isRunning)
                script.clock.set(at(3000))
                let ledger = try LMDBSessionLedger(directory: script.directory, policy: ScriptedLedger.policy, clock: script.clock.ledgerClock)
                ledger.close()
                let deadline = Date().addingTimeInterval(20)
                while child.isRunning && Date() < deadline { usleep(10_000) }
                if child.isRunning { child.terminate() }
                child.waitUntilExit()
                #expect(child.terminationStatus == 0)
                let lines = try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n")
                #expect(lines.count == 2)
            }
        }
    }

    // MARK: stats

    @Test("stats: events by kind and reason, names, clients, rejections, size, times")
    func stats() async throws {
        try await withScript { script in
            let json = try await runAudit(["stats", "--json", "--data-dir", script.directory])
            #expect(json.status == 0, "\(json.stderr)")
            let stats = try json.json()
            #expect(stats["events"] as? Int == 14)
            #expect(stats["firstTime"] as? String == iso(at(0)))
            #expect(stats["lastTime"] as? String == iso(at(2020)))
            #expect(stats["head"] as? String == script.head.hash.hex)
            let kinds = try #require(stats["byKind"] as? [String: Int])
            #expect(kinds == ["connected": 5, "disconnected": 4, "expired": 2, "rejected": 3])
            let reasons = try #require(stats["byReason"] as? [String: Int])
            #expect(reasons == [
                "disconnected.sessionTakenOver": 1, "disconnected.clientInitiatedDisconnect": 1,
                "disconnected.connectionLost": 1, "disconnected.brokerRestart": 1, "expired.sessionExpired": 1,
                "expired.expiredWhileBrokerDown": 1, "rejected.ownedByAnotherClient": 1, "rejected.quotaExceeded": 1,
                "rejected.invalidSessionName": 1,
            ])
            #expect(stats["rejections"] as? Int == 3)
            #expect(stats["sessionNames"] as? Int == 5)
            #expect(stats["clients"] as? Int == 4)
            #expect(stats["liveConnected"] as? Int == 1)
            #expect(stats["liveDisconnected"] as? Int == 0)
            #expect((stats["logBytes"] as? Int ?? 0) > 14 * 72)
            #expect((stats["dataFileBytes"] as? Int ?? 0) > 0)

            let table = try await runAudit(["stats", "--data-dir", script.directory])
            #expect(table.status == 0)
            #expect(table.lines.contains { $0.hasPrefix("events ") && $0.hasSuffix(" 14") })
            #expect(table.lines.contains { $0.contains("rejected.quotaExceeded") && $0.hasSuffix(" 1") })
        }
    }

    // MARK: bad input and read-only use

    @Test("bad input: a one-line error naming the problem, exit status 1")
    func badInput() async throws {
        try await withScript { script in
            let dir = script.directory
            let missing = temporaryPath("missing")
            expectBadInput(try await runAudit(["verify", "--data-dir", missing]), mentioning: [missing, "no such directory"])
            expectBadInput(try await runAudit(["stats", "--data-dir", missing]), mentioning: [missing])

            let foreign = temporaryPath("foreign")
            try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: foreign) }
            expectBadInput(try await runAudit(["sessions", "--data-dir", foreign]), mentioning: [foreign, "not a Custody ledger"])
            try Data("not a ledger".utf8).write(to: URL(fileURLWithPath: foreign + "/data.mdb"))
            expectBadInput(try await runAudit(["verify", "--data-dir", foreign]), mentioning: [foreign, "not a Custody ledger"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: foreign) == ["data.mdb"], "nothing added to a foreign directory")

            expectBadInput(try await runAudit(["history", "--session", "nobody", "--data-dir", dir]), mentioning: ["unknown session", "nobody"])
            expectBadInput(try await runAudit(["owner", "--session", "nobody", "--data-dir", dir]), mentioning: ["unknown session", "nobody"])
            expectBadInput(try await runAudit(["history", "--client", "mallory", "--data-dir", dir]), mentioning: ["unknown client", "mallory"])
            expectBadInput(try await runAudit(["sessions", "--client", "mallory", "--data-dir", dir]), mentioning: ["unknown client", "mallory"])
            // Session names are case-sensitive.
            expectBadInput(try await runAudit(["history", "--session", "S1", "--data-dir", dir]), mentioning: ["unknown session"])

            let future = iso(wallClockMicroseconds() + 3600 * second)
            expectBadInput(try await runAudit(["owner", "--session", "s1", "--at", future, "--data-dir", dir]), mentioning: [future, "future"])
            expectBadInput(try await runAudit(["sessions", "--at", future, "--data-dir", dir]), mentioning: [future, "future"])
            for bad in ["yesterday", "2025-03-01", "2025-03-01T08:00:00", "2025-02-30T08:00:00Z", "2025-03-01T25:00:00Z", "2025-03-01T08:00:00+02:00"] {
                expectBadInput(try await runAudit(["sessions", "--at", bad, "--data-dir", dir]), mentioning: [bad, "ISO-8601"])
            }
            expectBadInput(try await runAudit(["owner", "--session", "s1", "--seq", "99", "--data-dir", dir]), mentioning: ["--seq 99", "past the end"])
            expectBadInput(try await runAudit(["export", "--from", "99", "--data-dir", dir]), mentioning: ["--from 99", "past the end"])
            expectBadInput(try await runAudit(["export", "--to", "99", "--data-dir", dir]), mentioning: ["--to 99", "past the end"])

            // Flags that do not fit together are ArgumentParser's usage errors.
            let both = try await runAudit(["owner", "--session", "s1", "--seq", "1", "--at", iso(at(0)), "--data-dir", dir])
            #expect(both.status == 64)
            let neither = try await runAudit(["history", "--data-dir", dir])
            #expect(neither.status == 64)
        }
    }

    @Test("read-only: works while the ledger is open for writing, and never changes the data file")
    func readOnly() async throws {
        try await withScript { script in
            let file = URL(fileURLWithPath: script.directory + "/data.mdb")
            let before = try Data(contentsOf: file)
            for arguments in [
                ["verify"], ["stats"], ["sessions"], ["export"], ["history", "--client", "alice"],
                ["owner", "--session", "s1", "--seq", "5"],
            ] {
                #expect(try await runAudit(arguments + ["--data-dir", script.directory]).status == 0, "\(arguments)")
            }
            #expect(try Data(contentsOf: file) == before)

            // The broker is running on it.
            script.clock.set(at(3000))
            let ledger = try LMDBSessionLedger(directory: script.directory, policy: ScriptedLedger.policy, clock: script.clock.ledgerClock)
            defer { ledger.close() }
            let run = try await runAudit(["verify", "--data-dir", script.directory])
            #expect(run.stdout == "verify: ok events=15 head=\(ledger.head.hash.hex)\n")
            let live = try await runAudit(["sessions", "--json", "--at", iso(at(3000)), "--data-dir", script.directory]).jsonLines()
            #expect(live.map { $0["sessionName"] as? String } == ["s5"])
            #expect(live.map { $0["state"] as? String } == ["disconnected"])
        }
    }
}
