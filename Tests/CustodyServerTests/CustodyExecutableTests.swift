import CustodyTesting
import Foundation
import LMDBStorage
import SessionLedger
import Testing

/// Runs a process to its end and returns its exit code, standard output and error.
func runToEnd(_ executable: URL, _ arguments: [String]) throws -> (Int32, String, String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let output = out.fileHandleForReading.readDataToEndOfFile()
    let error = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: error, as: UTF8.self))
}

@Suite("custody executable")
struct CustodyExecutableTests {
    @Test(arguments: [
        (["--max-sessions-per-client", "0"], "--max-sessions-per-client must be between 1 and 100, got 0"),
        (["--max-sessions-per-client", "101"], "--max-sessions-per-client must be between 1 and 100, got 101"),
        (["--max-session-expiry-hours", "9"], "--max-session-expiry-hours must be between 1 and 8, got 9"),
        (["--max-session-expiry-hours", "one"], "max-session-expiry-hours"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--listen", "127.0.0.1"], "--listen"),
        (["--listen", "127.0.0.1:65536"], "--listen"),
        (["--listen", "127.0.0.1:0", "--listen", "::1:1883"], "--listen"),
        (["--connect-timeout-seconds", "0"], "--connect-timeout-seconds must be between 1 and 3600, got 0"),
        (["--log-level", "loud"], "--log-level"),
        (["--slow-consumer-seconds", "0"], "--slow-consumer-seconds must be between 1 and 86400, got 0"),
        (["--outbound-high-water-bytes", "1024"], "--outbound-high-water-bytes must be between 16384 and 1073741824, got 1024"),
        (["--max-outbound-inflight", "0"], "--max-outbound-inflight must be between 1 and 65535, got 0"),
        (["--max-packet-bytes", "100"], "--max-packet-bytes must be between 1024 and 268435460, got 100"),
        (["--max-subscriptions-per-session", "0"], "--max-subscriptions-per-session must be between 1 and 100000, got 0"),
        (["--max-retained-bytes", "0"], "--max-retained-bytes must be between 1 and 268435455, got 0"),
        (["--max-retained-messages", "0"], "--max-retained-messages must be between 1 and 100000000, got 0"),
        (["--queue-max-messages", "0"], "--queue-max-messages must be between 1 and 100000000, got 0"),
        (["--queue-max-bytes", "10"], "--queue-max-bytes must be between 1024 and 1099511627776, got 10"),
        (["--queue-overflow", "dropNewest"], "--queue-overflow 'dropNewest' is not one of dropOldest, endSession"),
        (["--max-topic-bytes", "0"], "--max-topic-bytes must be between 1 and 65535, got 0"),
        (["--max-topic-levels", "32769"], "--max-topic-levels must be between 1 and 32768, got 32769"),
        (["--max-user-property-bytes", "268435456"], "--max-user-property-bytes must be between 0 and 268435455, got 268435456"),
        (["--max-property-value-bytes", "0"], "--max-property-value-bytes must be between 1 and 65535, got 0"),
        (["--receive-maximum", "65536"], "--receive-maximum must be between 1 and 65535, got 65536"),
        (["--topic-alias-maximum", "65536"], "--topic-alias-maximum must be between 0 and 65535, got 65536"),
        (["--connects-per-second-per-session", "1001"], "--connects-per-second-per-session must be between 0 and 1000, got 1001"),
        (["--publish-messages-per-second", "1000001"], "--publish-messages-per-second must be between 0 and 1000000, got 1000001"),
        (["--publish-bytes-per-second", "1073741825"], "--publish-bytes-per-second must be between 0 and 1073741824, got 1073741825"),
        (["--max-connections", "0"], "--max-connections must be between 1 and 10000000, got 0"),
        (["--cluster-etcd", "127.0.0.1:2379", "--node-id", "n1"], "--cluster-etcd: '127.0.0.1:2379' is not an etcd client URL"),
        (["--cluster-etcd", "http://127.0.0.1:2379,", "--node-id", "n1"], "--cluster-etcd needs etcd's client URLs"),
        (["--cluster-etcd", "http://127.0.0.1:2379"], "--cluster-etcd needs --node-id NAME"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n/1"], "--node-id: 'n/1' is not a node id"),
        (["--node-id", "n1"], "--node-id and --cluster-lease-seconds need --cluster-etcd"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-lease-seconds", "1"],
         "--cluster-lease-seconds must be between 2 and 3600, got 1"),
        (["--cluster-nats", "nats://127.0.0.1:4222"], "--cluster-nats needs --cluster-etcd"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-nats", "http://127.0.0.1:4222"],
         "--cluster-nats: 'http://127.0.0.1:4222' is not a NATS server URL"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-nats", "nats://a:4222,"],
         "--cluster-nats needs NATS server URLs"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-nats-replicas", "3"],
         "--cluster-nats-replicas needs --cluster-nats"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-nats", "nats://127.0.0.1:4222",
          "--cluster-nats-replicas", "6"], "--cluster-nats-replicas must be between 1 and 5, got 6"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-nats-batch", "8"],
         "--cluster-nats-batch needs --cluster-nats"),
        (["--cluster-etcd", "http://127.0.0.1:2379", "--node-id", "n1", "--cluster-nats", "nats://127.0.0.1:4222",
          "--cluster-nats-batch", "0"], "--cluster-nats-batch must be between 1 and 1024, got 0"),
    ])
    func badFlagsExitWithAMessageNamingThem(arguments: [String], message: String) async throws {
        try await offPool {
            let (status, _, error) = try runToEnd(try builtProduct("custody"), arguments + ["--data-dir", scratchDirectory("flags")])
            #expect(status == 64)
            #expect(error.contains(message), "stderr: \(error)")
        }
    }

    @Test func unreachableEtcdIsNamed() async throws {
        try await offPool {
            let port = try freeLoopbackPort()
            let (status, _, error) = try runToEnd(try builtProduct("custody"), [
                "--data-dir", scratchDirectory("no-etcd"), "--listen", "127.0.0.1:0",
                "--cluster-etcd", "http://127.0.0.1:\(port)", "--node-id", "n1",
            ])
            #expect(status == 1)
            #expect(error.contains("cannot join the cluster on etcd http://127.0.0.1:\(port) as node n1: etcd unreachable"), "stderr: \(error)")
        }
    }

    @Test func unusableDataDirectoryIsNamed() async throws {
        try await offPool {
            let file = scratchDirectory("not-a-dir")
            #expect(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
            defer { try? FileManager.default.removeItem(atPath: file) }
            let (status, _, error) = try runToEnd(try builtProduct("custody"), ["--data-dir", file])
            #expect(status == 1)
            #expect(error.contains("cannot open the ledger in \(file)"), "stderr: \(error)")
        }
    }

    /// A listener that cannot be opened stops custody with a message naming the address.
    @Test func portInUseIsNamed() async throws {
        try await offPool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            #expect(fd >= 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                    bind(fd, pointer, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, pointer, &length) == 0
                }
            }
            #expect(bound)
            let port = Int(UInt16(bigEndian: address.sin_port))
            let directory = scratchDirectory("port-in-use")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let (status, output, error) = try runToEnd(
                try builtProduct("custody"), ["--data-dir", directory, "--listen", "127.0.0.1:\(port)"])
            #expect(status == 1)
            #expect(error.contains("cannot listen on 127.0.0.1:\(port)"), "stderr: \(error)")
            #expect(!output.contains("custody: running"))
        }
    }

    /// Sessions left connected by a crash are closed by the next start; SIGTERM stops
    /// the broker cleanly, and the ledger it leaves verifies.
    @Test func startsRecoversAndStopsOnSIGTERM() async throws {
        try await offPool {
            let directory = scratchDirectory("custody-run")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let ledger = try LMDBSessionLedger(directory: directory)
            for index in 0..<3 {
                let outcome = try waitForClaim(ledger, ClaimRequest(
                    authenticationName: AuthenticationName(unchecked: "device"), sessionName: SessionName(unchecked: "s\(index)"),
                    connection: ledger.nextConnectionNumber(), requestedExpiryInterval: 600))
                guard case .granted = outcome else { Issue.record("claim \(index): \(outcome)"); return }
            }
            ledger.close()  // without releasing: as if the broker had crashed

            let custody = try RunningCustody("run", directory: directory)
            defer { custody.cleanUp() }
            custody.stop()  // SIGTERM
            #expect(custody.process.terminationReason == .exit && custody.process.terminationStatus == 0)
            let printed = custody.stdout
            #expect(printed.contains("disconnected_by_restart=3"), "\(printed)")
            #expect(printed.contains("SIGTERM received"))
            #expect(printed.contains("custody: listening mqtt 127.0.0.1:"))
            #expect(!printed.contains("custody: listening mqtt 127.0.0.1:0\n"), "port 0 is reported as the bound port")

            let store = try LedgerStore(directory: directory, options: LedgerStoreOptions(readOnly: true))
            defer { store.close() }
            let report = try store.read { try $0.verify() }
            #expect(report.isIntact)
            #expect(report.events == 6)
            let states = try store.read { snapshot in try (0..<3).map { try snapshot.session(SessionName(unchecked: "s\($0)"))?.isConnected } }
            #expect(states == [false, false, false])
        }
    }
}

@Suite("custody configuration file")
struct CustodyConfigurationFileTests {
    func write(_ text: String, _ label: String) throws -> String {
        let path = scratchDirectory(label) + ".yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func checkConfigPrintsWhatAValidFileSets() async throws {
        try await offPool {
            let file = try write("""
                dataDir: /tmp/custody-check-config-data
                listeners:
                  - { protocol: mqtt, address: 127.0.0.1:1999 }
                namespace:
                  maximumClientSessionsPerAuthenticationName: 7
                  maximumSessionExpiryInHours: 3
                """, "check-good")
            defer { try? FileManager.default.removeItem(atPath: file) }
            let (status, output, error) = try runToEnd(try builtProduct("custody"), ["--check-config", file])
            #expect(status == 0, "stderr: \(error)")
            #expect(output.contains("\(file) is valid"))
            #expect(output.contains("dataDir /tmp/custody-check-config-data"))
            #expect(output.contains("listeners mqtt 127.0.0.1:1999"))
            #expect(output.contains("maximumClientSessionsPerAuthenticationName=7 maximumSessionExpiryInHours=3"))
            #expect(!FileManager.default.fileExists(atPath: "/tmp/custody-check-config-data"), "--check-config starts nothing")
        }
    }

    @Test(arguments: [
        ("namespace:\n  maximumSessionExpiryInHours: 9\n", "2", "namespace.maximumSessionExpiryInHours"),
        ("dataDir: ./d\nlisten: 127.0.0.1:1883\n", "2", "listen"),
        ("listeners:\n  - { protocol: mqtt, address: '127.0.0.1:http' }\n", "2", "listeners[0].address"),
    ])
    func badFilesStopWithLineAndKey(text: String, line: String, key: String) async throws {
        try await offPool {
            let file = try write(text, "check-bad")
            defer { try? FileManager.default.removeItem(atPath: file) }
            for arguments in [["--check-config", file], ["--config", file]] {
                let (status, output, error) = try runToEnd(try builtProduct("custody"), arguments)
                #expect(status == 1, "\(arguments): stdout \(output)")
                #expect(error.contains("\(file):\(line)"), "stderr: \(error)")
                #expect(error.contains(key), "stderr: \(error)")
                #expect(!output.contains("custody: running"))
            }
        }
    }

    /// The sample shipped in Tools/ stays valid.
    @Test func exampleConfigurationIsValid() async throws {
        try await offPool {
            let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("Tools/custody.example.yaml").path
            let (status, output, error) = try runToEnd(try builtProduct("custody"), ["--check-config", example])
            #expect(status == 0, "stderr: \(error)")
            #expect(output.contains("is valid"))
        }
    }

    @Test func missingFileIsNamed() async throws {
        try await offPool {
            let file = scratchDirectory("no-such") + ".yaml"
            let (status, _, error) = try runToEnd(try builtProduct("custody"), ["--config", file])
            #expect(status == 1)
            #expect(error.contains(file), "stderr: \(error)")
        }
    }

    /// The file sets the ledger directory and the policy; a flag given as well wins.
    @Test func fileThenFlags() async throws {
        try await offPool {
            let directory = scratchDirectory("config-run")
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let file = try write("""
                dataDir: \(directory)
                listeners:
                  - { protocol: mqtt, address: 127.0.0.1:0 }
                namespace:
                  maximumClientSessionsPerAuthenticationName: 7
                  maximumSessionExpiryInHours: 3
                """, "config-run")
            defer { try? FileManager.default.removeItem(atPath: file) }
            let custody = try RunningCustody(
                "config-run", arguments: ["--config", file, "--max-session-expiry-hours", "5"], directory: directory,
                ownFlags: true)
            defer { custody.cleanUp() }
            custody.stop()
            let printed = custody.stdout
            #expect(custody.process.terminationStatus == 0, "\(printed)\n\(custody.stderr)")
            #expect(printed.contains("custody: ledger \(directory) "), "\(printed)")
            #expect(printed.contains("max_sessions_per_client=7 max_session_expiry_hours=5"), "\(printed)")
            #expect(FileManager.default.fileExists(atPath: directory + "/data.mdb"), "the ledger is where the file says")
        }
    }
}

/// Claims synchronously, for tests outside async contexts.
func waitForClaim(_ ledger: LMDBSessionLedger, _ request: ClaimRequest) throws -> ClaimOutcome {
    let box = ClaimBox()
    let done = DispatchSemaphore(value: 0)
    ledger.claim(request) { result in
        box.result = result
        done.signal()
    }
    done.wait()
    return try box.result!.get()
}

final class ClaimBox: @unchecked Sendable {
    var result: Result<ClaimOutcome, LedgerError>?
}

/// `custody --check-config FILE --client NAME [--publish TOPIC | --subscribe FILTER]`: allow or
/// deny with what decided it, exit 0 or 1; the client's grants without a question.
@Suite("custody --check-config --client")
struct CheckAccessTests {
    @Test func explainsAllowAndDenyWithTheBindingAndTemplate() async throws {
        try await offPool {
            let file = scratchDirectory("check-access") + ".yaml"
            try """
                clientGroups:
                  - { name: machines, query: "authenticationName IN ['m1', 'm2']" }
                topicSpaces:
                  - { name: telemetry, topicTemplates: ["machines/${client.authenticationName}/#"] }
                permissionBindings:
                  - { name: machines-pub, clientGroupName: machines, topicSpaceName: telemetry, permission: Publisher }
                """.write(toFile: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: file) }
            let custody = try builtProduct("custody")
            let (allowed, out, err) = try runToEnd(custody, ["--check-config", file, "--client", "m1", "--publish", "machines/m1/temp"])
            #expect(allowed == 0, "\(err)")
            #expect(out.contains("allow: publish machines/m1/temp: granted by binding 'machines-pub' (group 'machines', topic space 'telemetry', template 'machines/${client.authenticationName}/#' as 'machines/m1/#')"), "\(out)")
            #expect(out.contains("client groups: $all, machines"), "\(out)")
            let (denied, out2, _) = try runToEnd(custody, ["--check-config", file, "--client", "m1", "--publish", "machines/m2/temp"])
            #expect(denied == 1)
            #expect(out2.contains("deny: publish machines/m2/temp: no permission binding grants it"), "\(out2)")
            let (subscribe, out3, _) = try runToEnd(custody, ["--check-config", file, "--client", "m1", "--subscribe", "machines/#"])
            #expect(subscribe == 1)
            #expect(out3.contains("deny: subscribe machines/#"), "\(out3)")
            let (listing, out4, _) = try runToEnd(custody, ["--check-config", file, "--client", "m2"])
            #expect(listing == 0)
            #expect(out4.contains("publish: binding 'machines-pub'"), "\(out4)")
            let (usage, _, err5) = try runToEnd(custody, ["--client", "m2", "--publish", "x"])
            #expect(usage != 0)
            #expect(err5.contains("--client goes with --check-config FILE"), "\(err5)")
        }
    }
}
