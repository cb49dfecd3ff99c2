import Foundation
import MQTTCodec
import NIOCore
import SessionLedger
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Operating custody, end to end with the real binary: /metrics after a scripted session
// sequence, lifecycle events over MQTT against `custody-audit export`, a graceful SIGTERM
// with open connections, JSON log lines, and the refusals (remote metrics, foreign subscribers).


/// The port `custody: metrics http://127.0.0.1:PORT/metrics` names.
func metricsPort(_ custody: RunningCustody) throws -> Int {
    let out = try custody.waitForOutput(containing: "custody: metrics http://", timeout: 10)
    guard let line = out.split(separator: "\n").first(where: { $0.hasPrefix("custody: metrics http://127.0.0.1:") }),
        let port = Int(line.dropFirst("custody: metrics http://127.0.0.1:".count).prefix { $0.isNumber })
    else { throw E2EError.unexpected("no metrics line in \(out)") }
    return port
}

/// GET /metrics over a real socket.
func scrape(_ port: Int) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw E2EError.unexpected("socket") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw E2EError.unexpected("connect to metrics: errno \(errno)") }
    let request = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, request.count, Int32(MSG_NOSIGNAL)) }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65_536, 0) }
        if n <= 0 { break }
        response.append(contentsOf: chunk[0..<n])
    }
    let text = String(decoding: response, as: UTF8.self)
    guard text.hasPrefix("HTTP/1.1 200") else { throw E2EError.unexpected("metrics answered: \(text.prefix(200))") }
    return text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
}

/// The value of the sample `series` (name plus labels exactly as exposed, e.g.
/// `custody_mqtt_connects_total{outcome="granted",reason_code="0x00"}`); labels in any order.
private func value(_ series: String, in text: String) -> Double? {
    func normalized(_ s: Substring) -> String {
        guard let open = s.firstIndex(of: "{"), let close = s.lastIndex(of: "}") else { return String(s) }
        let labels = s[s.index(after: open)..<close].split(separator: ",").sorted().joined(separator: ",")
        return "\(s[..<open]){\(labels)}"
    }
    let wanted = normalized(Substring(series))
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " ") else { continue }
        if normalized(line[..<space]) == wanted { return Double(line[line.index(after: space)...]) }
    }
    return nil
}

/// Scrapes until every expectation holds (the server counts as it goes) or the time is up;
/// returns the last scrape.
private func scrapeUntil(_ port: Int, timeout: Double = 10, _ expected: [String: Double]) throws -> String {
    let deadline = Date().addingTimeInterval(timeout)
    var text = ""
    while Date() < deadline {
        text = try scrape(port)
        if expected.allSatisfy({ value($0.key, in: text) == $0.value }) { return text }
        usleep(50_000)
    }
    return text
}

/// `custody-audit export` of the ledger, parsed: one dictionary per event.
private func exported(_ directory: String) throws -> [[String: Any]] {
    let (status, out, err) = try run(try builtProduct("custody-audit").path, ["export", "--data-dir", directory])
    guard status == 0 else { throw E2EError.unexpected("custody-audit export: \(err)") }
    return try out.split(separator: "\n").map { line in
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw E2EError.unexpected("export line \(line)")
        }
        return object
    }
}

private func subscribe(_ filter: String, qos: MQTTQoS = .atLeastOnce, id: UInt16 = 1) -> MQTTPacket {
    .subscribe(MQTTSubscribe(
        packetIdentifier: id, subscriptions: [MQTTSubscription(topicFilter: filter, options: MQTTSubscriptionOptions(qos: qos))]))
}

@Suite("Operations end to end", .serialized)
struct OperationsEndToEndTests {
    @Test func metricsCountAScriptedSessionSequence() async throws {
        try await offPool {
            try withCustody("metrics", ["--metrics", "127.0.0.1:0", "--event-subscriber", "ops"] + fastReconnects) { custody in
                let port = try metricsPort(custody)
                // A connection that never sends a CONNECT is no CONNECT to count.
                let silent = try RawClient(port: custody.port)
                silent.drop()
                // A persistent subscriber goes away: QoS 1 messages queue for it.
                let offline = try RawClient(port: custody.port)
                #expect(try offline.connect("q1", user: "carol", clean: true, expiry: 300).reasonCode == .success)
                try offline.send(subscribe("t/#"))
                guard case .suback(let suback)? = try offline.receive() else { throw E2EError.unexpected("no SUBACK") }
                #expect(suback.reasonCodes == [.grantedQoS1])
                try offline.send(.disconnect(MQTTDisconnect()))
                _ = try offline.receiveUntilClosed()

                let first = try RawClient(port: custody.port)
                #expect(try first.connect("s1", user: "alice").reasonCode == .success)
                let second = try RawClient(port: custody.port)
                #expect(try second.connect("s1", user: "alice").reasonCode == .success)  // takeover
                #expect(try first.receiveUntilClosed() == [.disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver))])
                let intruder = try RawClient(port: custody.port)
                #expect(try intruder.connect("s1", user: "mallory").reasonCode == .notAuthorized)
                try second.send(.publish(MQTTPublish(topicName: "t/a", payload: ByteBuffer(string: "zero"))))
                try second.send(.publish(MQTTPublish(
                    topicName: "t/b", payload: ByteBuffer(string: "one"), qos: .atLeastOnce, packetIdentifier: 1)))
                guard case .puback(let puback)? = try second.receive() else { throw E2EError.unexpected("no PUBACK") }
                #expect(puback.reasonCode == .success)
                try second.send(.disconnect(MQTTDisconnect()))
                _ = try second.receiveUntilClosed()
                // A real 3.1.1 client publishes QoS 1 too.
                let (status, _, err) = try run("/usr/bin/mosquitto_pub", [
                    "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "dave", "-i", "pub-1", "-t", "t/c", "-m", "x", "-q", "1",
                ])
                #expect(status == 0, "\(err)")
                try custody.waitForEvent { $0.sessionName.value == "pub-1" && $0.kind == .disconnected(.clientInitiatedDisconnect) }

                let head = try custody.events().count
                let text = try scrapeUntil(port, [
                    "custody_mqtt_connections_open": 0,
                    "custody_sessions_disconnected_total{reason=\"clientInitiatedDisconnect\"}": 3,
                    "custody_ledger_events_total": Double(head),
                    "custody_lifecycle_events_published_total": Double(head),
                ])
                let expected: [String: Double] = [
                    "custody_mqtt_connects_total{outcome=\"granted\",reason_code=\"0x00\"}": 4,
                    "custody_mqtt_connects_total{outcome=\"rejected\",reason_code=\"0x87\"}": 1,
                    "custody_mqtt_connections_open": 0,
                    "custody_sessions_connected_total": 4,
                    "custody_sessions_takeovers_total": 1,
                    "custody_sessions_disconnected_total{reason=\"sessionTakenOver\"}": 1,
                    "custody_sessions_disconnected_total{reason=\"clientInitiatedDisconnect\"}": 3,
                    "custody_sessions_rejected_total{reason=\"ownedByAnotherClient\"}": 1,
                    "custody_sessions_expired_total{reason=\"sessionExpired\"}": 0,
                    "custody_sessions_live{state=\"connected\"}": 0,
                    "custody_sessions_live{state=\"disconnected\"}": 1,
                    "custody_mqtt_messages_received_total{qos=\"0\"}": 1,
                    "custody_mqtt_messages_received_total{qos=\"1\"}": 2,
                    "custody_mqtt_messages_received_total{qos=\"2\"}": 0,
                    "custody_mqtt_messages_sent_total{qos=\"1\"}": 0,
                    "custody_broker_messages_queued": 2,
                    "custody_broker_messages_dropped_total{reason=\"queue_full\"}": 0,
                    "custody_ledger_events_total": Double(head),
                    "custody_lifecycle_events_published_total": Double(head),
                    "custody_ledger_events_per_commit_sum": Double(head),
                ]
                for (series, wanted) in expected.sorted(by: { $0.key < $1.key }) {
                    #expect(value(series, in: text) == wanted, "\(series)")
                }
                let commits = try #require(value("custody_ledger_commits_total", in: text))
                #expect(commits >= 1 && commits <= Double(head))
                #expect(value("custody_ledger_commit_duration_seconds_count", in: text) == commits)
                #expect(value("custody_ledger_events_per_commit_count", in: text) == commits)
                #expect((value("custody_mqtt_bytes_received_total", in: text) ?? 0) > 0)
                #expect((value("custody_mqtt_bytes_sent_total", in: text) ?? 0) > 0)
                #expect(text.contains("custody_ledger_commit_duration_seconds_bucket{le=\"0.001\"}"))
                let (_, version, _) = try run(try builtProduct("custody").path, ["--version"])
                #expect(value("custody_build_info{version=\"\(version.trimmingCharacters(in: .whitespacesAndNewlines))\"}", in: text) == 1)
                let started = try #require(value("custody_start_time_seconds", in: text))
                #expect(abs(started - Date().timeIntervalSince1970) < 3600)
                // The ledger's room, read at the scrape (issue 16).
                #expect((value("custody_ledger_bytes{part=\"live\"}", in: text) ?? 0) > 0)
                #expect(value("custody_ledger_bytes{part=\"archive\"}", in: text) == 0)
                let ratio = try #require(value("custody_ledger_map_used_ratio", in: text))
                #expect(ratio > 0 && ratio < 0.01)
                #expect(value("custody_ledger_archive_segments", in: text) == 0)
                #expect((value("custody_ledger_oldest_live_event_age_seconds", in: text) ?? -1) >= 0)
            }
        }
    }

    @Test func eventSubscribersSeeTheLedgerInOrderAndNobodyElseDoes() async throws {
        try await offPool {
            try withCustody("events", ["--event-subscriber", "Ops"] + fastReconnects) { custody in
                // The operator (names compare case-insensitively), with a real client.
                let operatorSub = try Background("/usr/bin/stdbuf", [
                    "-oL", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "ops", "-i", "ops-watch", "-V", "mqttv5",
                    "-t", "$custody/events/#", "-q", "1", "-F", "%t %p", "-d",
                ])
                let everything = try Background("/usr/bin/stdbuf", [
                    "-oL", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "watcher", "-i", "all-watch", "-V", "mqttv5",
                    "-t", "#", "-t", "+/events/#", "-q", "1", "-F", "%t %p", "-d",
                ])
                defer { operatorSub.stop(); everything.stop() }
                try operatorSub.waitForOutput(containing: "received SUBACK")
                try everything.waitForOutput(containing: "received SUBACK")
                // Someone else may not subscribe there.
                let nosy = try RawClient(port: custody.port)
                #expect(try nosy.connect("nosy-1", user: "nosy").reasonCode == .success)
                try nosy.send(subscribe("$custody/events/#"))
                #expect(try nosy.receive() == .suback(MQTTSubAck(packetIdentifier: 1, reasonCodes: [.notAuthorized])))
                try nosy.send(.publish(MQTTPublish(
                    topicName: "$custody/events/clients/x/sessions/y", payload: ByteBuffer(string: "{}"), qos: .atLeastOnce,
                    packetIdentifier: 2)))
                #expect(try nosy.receive() == .puback(MQTTPublishResponse(packetIdentifier: 2, reasonCode: .notAuthorized)))
                try nosy.send(.disconnect(MQTTDisconnect()))
                _ = try nosy.receiveUntilClosed()

                // Connect, takeover, reject, and an expiry (interval 1 s).
                let first = try RawClient(port: custody.port)
                #expect(try first.connect("dev/1+#", user: "alice").reasonCode == .success)
                let second = try RawClient(port: custody.port)
                #expect(try second.connect("dev/1+#", user: "alice").reasonCode == .success)
                _ = try first.receiveUntilClosed()
                let intruder = try RawClient(port: custody.port)
                #expect(try intruder.connect("dev/1+#", user: "mallory").reasonCode == .notAuthorized)
                let brief = try RawClient(port: custody.port)
                #expect(try brief.connect("brief", user: "alice", clean: true, expiry: 1).reasonCode == .success)
                try brief.send(.disconnect(MQTTDisconnect()))
                _ = try brief.receiveUntilClosed()
                try second.send(.disconnect(MQTTDisconnect()))
                _ = try second.receiveUntilClosed()
                let expiredEvent = try custody.waitForEvent(timeout: 15) { $0.kind == .expired(.sessionExpired) }
                try operatorSub.waitForOutput(containing: "\"seq\":\(expiredEvent.sequence),")

                let export = try exported(custody.directory)
                let received = operatorSub.output.split(separator: "\n").filter { $0.hasPrefix("$custody/events/") }
                var documents: [[String: Any]] = []
                for line in received {
                    let space = try #require(line.firstIndex(of: " "))
                    let topic = String(line[..<space])
                    let document = try #require(
                        try JSONSerialization.jsonObject(with: Data(line[line.index(after: space)...].utf8)) as? [String: Any])
                    let client = try #require(document["authenticationName"] as? String)
                    let session = try #require(document["sessionName"] as? String)
                    func escaped(_ s: String) -> String {
                        s.replacingOccurrences(of: "%", with: "%25").replacingOccurrences(of: "/", with: "%2F")
                            .replacingOccurrences(of: "+", with: "%2B").replacingOccurrences(of: "#", with: "%23")
                    }
                    #expect(topic == "$custody/events/clients/\(escaped(client))/sessions/\(escaped(session))")
                    documents.append(document)
                }
                // In ledger order, without gaps, through the expiry; each equal to its export line.
                let sequences = documents.compactMap { $0["seq"] as? Int }
                #expect(sequences.count == documents.count)
                let firstSeq = try #require(sequences.first)
                #expect(sequences == Array(firstSeq..<(firstSeq + sequences.count)))
                #expect(sequences.last == Int(expiredEvent.sequence))
                for document in documents {
                    let seq = document["seq"] as! Int
                    let line = try #require(export.first { $0["seq"] as? Int == seq })
                    let mine = try JSONSerialization.data(withJSONObject: document, options: .sortedKeys)
                    let theirs = try JSONSerialization.data(withJSONObject: line, options: .sortedKeys)
                    #expect(mine == theirs, "seq \(seq): \(String(decoding: mine, as: UTF8.self)) vs \(String(decoding: theirs, as: UTF8.self))")
                }
                let kinds = documents.map { "\($0["kind"]!)/\($0["reason"].map { "\($0)" } ?? "-")" }
                for wanted in ["connected/<null>", "disconnected/sessionTakenOver", "rejected/ownedByAnotherClient", "expired/sessionExpired"] {
                    #expect(kinds.contains(wanted), "\(wanted) in \(kinds)")
                }
                // The operator's own view starts after its subscription: every later event is there.
                #expect(Int(try custody.events().count) >= sequences.last!)
                // Top-level wildcards never see them.
                #expect(!everything.output.contains("$custody"), "\(everything.output)")
            }
        }
    }

    @Test func sigtermClosesEveryConnectionInOneCommitAndExitsZero() async throws {
        try await offPool {
            let custody = try RunningCustody("sigterm")
            defer { custody.cleanUp() }
            var clients: [RawClient] = []
            for i in 0..<5 {
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("keep-\(i)", user: "u\(i % 2)", clean: i % 2 == 0, expiry: i % 2 == 0 ? 0 : 600).reasonCode == .success)
                clients.append(client)
            }
            // Line-buffered, so that the debug line about the SUBACK shows as it happens.
            let v3 = try Background("/usr/bin/stdbuf", [
                "-oL", "/usr/bin/mosquitto_sub", "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "legacy", "-i", "keep-v3", "-t", "x", "-d",
            ])
            defer { v3.stop() }
            try v3.waitForOutput(containing: "received SUBACK")
            let before = try custody.events().count

            custody.process.terminate()
            for client in clients {
                #expect(try client.receiveUntilClosed(timeout: 10) == [.disconnect(MQTTDisconnect(reasonCode: .serverShuttingDown))])
            }
            custody.process.waitUntilExit()
            #expect(custody.process.terminationStatus == 0, "\(custody.stderr)")
            #expect(custody.stdout.contains("custody: SIGTERM received"))
            #expect(custody.stdout.contains("connections_closed=6"), "\(custody.stdout)")

            let (status, out, err) = try run(try builtProduct("custody-audit").path, ["verify", "--data-dir", custody.directory])
            #expect(status == 0 && out.hasPrefix("verify: ok"), "\(out)\(err)")
            let export = try exported(custody.directory)
            let ends = Array(export.dropFirst(before))
            #expect(ends.count == 6)
            #expect(ends.allSatisfy { $0["kind"] as? String == "disconnected" && $0["reason"] as? String == "serverInitiatedDisconnect" })
            #expect(Set(ends.compactMap { $0["sessionName"] as? String }) == Set((0..<5).map { "keep-\($0)" } + ["keep-v3"]))
            // One commit: every event of a commit carries the commit's one timestamp.
            #expect(Set(ends.compactMap { $0["time"] as? String }).count == 1, "\(ends.map { $0["time"]! })")

            // The next start says where it stands.
            let again = try RunningCustody("sigterm-again", directory: custody.directory)
            defer { again.stop() }
            #expect(again.stdout.contains("custody: ledger \(custody.directory) head=\(export.count) "), "\(again.stdout)")
            #expect(again.stdout.contains("custody: recovered sessions disconnected_by_restart=0 expired_while_down=0"))
        }
    }

    /// A subscriber that reads nothing while 300 × 64 KiB are published to it, and the
    /// publisher (both still open).
    private func stallASubscriber(_ custody: RunningCustody) throws -> (stalled: RawClient, publisher: RawClient) {
        let stalled = try RawClient(port: custody.port)
        #expect(try stalled.connect("stalled", user: "u").reasonCode == .success)
        try stalled.send(subscribe("big", qos: .atMostOnce))
        guard case .suback? = try stalled.receive() else { throw E2EError.unexpected("no SUBACK") }
        let publisher = try RawClient(port: custody.port)
        #expect(try publisher.connect("publisher", user: "u").reasonCode == .success)
        let chunk = ByteBuffer(repeating: 0x61, count: 64 * 1024)
        for _ in 0..<300 { try publisher.send(.publish(MQTTPublish(topicName: "big", payload: chunk))) }
        return (stalled, publisher)
    }

    /// A second signal does not wait for the graceful stop: exit 128 + 15 at once; the ledger
    /// stays valid (the next start recovers what the stop did not record). The graceful stop
    /// is kept busy by a subscriber that reads nothing while megabytes are sent to it: its
    /// DISCONNECT waits behind them (up to the 5 s grace).
    @Test func aSecondSigtermExitsAtOnce() async throws {
        try await offPool {
            let custody = try RunningCustody("second-signal")
            defer { custody.cleanUp() }
            let (stalled, publisher) = try stallASubscriber(custody)
            // Everything was taken in: a PINGRESP comes after the 300 PUBLISHes were handled.
            try publisher.send(.pingreq)
            #expect(try publisher.receive(timeout: 20) == .pingresp)

            let pid = custody.process.processIdentifier
            kill(pid, SIGTERM)
            try custody.waitForOutput(containing: "custody: SIGTERM received", timeout: 10)
            #expect(!custody.stdout.contains("custody: stopped"))
            kill(pid, SIGTERM)
            custody.process.waitUntilExit()
            #expect(custody.process.terminationReason == .exit)
            #expect(custody.process.terminationStatus == 128 + SIGTERM, "\(custody.stdout)\(custody.stderr)")
            #expect(custody.stderr.contains("custody: second SIGTERM, exiting at once"))
            #expect(!custody.stdout.contains("custody: stopped"))
            let (status, out, err) = try run(try builtProduct("custody-audit").path, ["verify", "--data-dir", custody.directory])
            #expect(status == 0 && out.hasPrefix("verify: ok"), "\(out)\(err)")
        }
    }

    /// A client that reads nothing cannot hold the stop: after the grace its connection is
    /// closed anyway, its end is recorded with the others, and custody exits 0.
    @Test func aStalledClientDoesNotHoldTheStop() async throws {
        try await offPool {
            let custody = try RunningCustody("stalled-stop")
            defer { custody.cleanUp() }
            let (stalled, publisher) = try stallASubscriber(custody)
            try publisher.send(.pingreq)
            #expect(try publisher.receive(timeout: 20) == .pingresp)
            let before = try custody.events().count

            custody.process.terminate()
            let deadline = Date().addingTimeInterval(60)
            while custody.process.isRunning, Date() < deadline { usleep(20_000) }
            #expect(!custody.process.isRunning, "custody still running a minute after SIGTERM")
            guard !custody.process.isRunning else { return }
            #expect(custody.process.terminationStatus == 0, "\(custody.stdout)\(custody.stderr)")
            #expect(custody.stdout.contains("connections_closed=2"), "\(custody.stdout)")
            let ends = Array(try exported(custody.directory).dropFirst(before))
            #expect(ends.count == 2 && ends.allSatisfy { $0["reason"] as? String == "serverInitiatedDisconnect" })
        }
    }

    /// The backup the README gives: `mdb_copy` of the ledger (and of the broker's store) while
    /// custody runs and clients come and go; the copy verifies and a custody starts from it.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/mdb_copy")))
    func mdbCopyOfARunningLedgerVerifies() async throws {
        try await offPool {
            try withCustody("backup", fastReconnects) { custody in
                let backup = scratchDirectory("backup-copy")
                defer { try? FileManager.default.removeItem(atPath: backup) }
                try FileManager.default.createDirectory(atPath: backup + "/broker", withIntermediateDirectories: true)
                // Clients keep connecting (persistent sessions, takeovers) while the copy is made.
                let load = try Background("/bin/sh", ["-c", """
                    for i in $(seq 1 150); do
                      /usr/bin/mosquitto_pub -h 127.0.0.1 -p \(custody.port) -u u$(( (i % 11) % 5 )) -i s$((i % 11)) -c -x 60 -q 1 -t t -m $i || exit 1
                    done; echo done
                    """])
                defer { load.stop() }
                try custody.waitForEvent { $0.sequence >= 20 }
                let (ledgerStatus, _, ledgerError) = try run("/usr/bin/mdb_copy", [custody.directory, backup])
                #expect(ledgerStatus == 0, "\(ledgerError)")
                let (brokerStatus, _, brokerError) = try run("/usr/bin/mdb_copy", [custody.directory + "/broker", backup + "/broker"])
                #expect(brokerStatus == 0, "\(brokerError)")
                try load.waitForOutput(containing: "done", timeout: 60)

                let (status, out, err) = try run(try builtProduct("custody-audit").path, ["verify", "--data-dir", backup])
                #expect(status == 0 && out.hasPrefix("verify: ok events="), "\(out)\(err)")
                let copied = Int(out.split(separator: " ").first { $0.hasPrefix("events=") }?.dropFirst(7) ?? "") ?? 0
                #expect(copied >= 20)
                // A broker started from the copy recovers it (sessions the copy shows connected end with brokerRestart).
                let restored = try RunningCustody("backup-restored", directory: backup)
                defer { restored.stop() }
                #expect(restored.stdout.contains("custody: ledger \(backup) head="))
                let (after, afterOut, afterErr) = try run(try builtProduct("custody-audit").path, ["verify", "--data-dir", backup])
                #expect(after == 0 && afterOut.hasPrefix("verify: ok"), "\(afterOut)\(afterErr)")
            }
        }
    }

    @Test func jsonLogLinesParse() async throws {
        try await offPool {
            try withCustody("jsonlog", ["--log-format", "json", "--log-level", "debug"]) { custody in
                let client = try RawClient(port: custody.port)
                #expect(try client.connect("json-1", user: "alice").reasonCode == .success)
                try client.send(.disconnect(MQTTDisconnect()))
                _ = try client.receiveUntilClosed()
                try custody.waitForLog("\"message\":\"disconnected\"")
                let lines = custody.stderr.split(separator: "\n")
                #expect(lines.count >= 4)
                var messages: [String] = []
                for line in lines {
                    let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
                    #expect(Set(object.keys) == ["time", "level", "label", "message", "metadata"], "\(line)")
                    let message = try #require(object["message"] as? String)
                    #expect(message == message.lowercased(), "\(message)")
                    let metadata = object["metadata"] as? [String: Any] ?? [:]
                    for key in metadata.keys {
                        #expect(key.allSatisfy { $0.isLowercase || $0 == "_" }, "\(key)")
                    }
                    if let remote = metadata["remote_address"] as? String {
                        #expect(try #/^127\.0\.0\.1:\d+$/#.wholeMatch(in: remote) != nil, "\(line)")
                    }
                    messages.append(message)
                }
                #expect(messages.contains("connect granted"))
                #expect(messages.contains("packet received"))
                #expect(messages.contains("packet sent"))
                let granted = try #require(lines.first { $0.contains("\"connect granted\"") })
                let metadata = try #require(
                    (try JSONSerialization.jsonObject(with: Data(granted.utf8)) as? [String: Any])?["metadata"] as? [String: String])
                #expect(metadata["session_name"] == "json-1")
                #expect(metadata["authentication_name"] == "alice")
            }
        }
    }

    @Test func metricsOffTheLoopbackAreRefusedUnlessAllowed() async throws {
        try await offPool {
            let directory = scratchDirectory("remote-metrics")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let (status, out, err) = try run(try builtProduct("custody").path, [
                "--data-dir", directory, "--listen", "127.0.0.1:0", "--metrics", "0.0.0.0:0",
            ])
            #expect(status == 1, "\(out)\(err)")
            #expect(err.contains("metrics 0.0.0.0:0 is not a loopback address") && err.contains("--metrics-allow-remote"), "\(err)")
            #expect(!FileManager.default.fileExists(atPath: directory), "nothing was opened")
            let (badStatus, _, badErr) = try run(try builtProduct("custody").path, ["--data-dir", directory, "--log-format", "xml"])
            #expect(badStatus != 0 && badErr.contains("--log-format 'xml'"), "\(badErr)")
            let (versionStatus, version, _) = try run(try builtProduct("custody").path, ["--version"])
            #expect(versionStatus == 0 && version.split(separator: ".").count == 3, "\(version)")
        }
    }
}
