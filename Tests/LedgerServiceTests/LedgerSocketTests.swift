import CustodyTesting
import Foundation
import LedgerCore
import LedgerWire
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The ledger socket of a real `custody`, spoken to over a real Unix domain socket: claims,
/// releases and authorization go through the same ledger as custody's own MQTT listeners,
/// and a peer that does not speak the protocol is refused and closed.
@Suite(.serialized) struct LedgerSocketTests {
    @Test func claimsAndReleasesGoThroughTheOneLedger() async throws {
        try await offPool {
            let path = try ledgerSocketPath("claims")
            try withCustody("ledger-socket", ["--ledger-socket", path, "--connects-per-second-per-session", "0"]) { custody in
                var status = stat()
                #expect(stat(path, &status) == 0)
                #expect(status.st_mode & 0o777 == 0o660)
                #expect(status.st_mode & S_IFMT == S_IFSOCK)
                let client = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let first) = try client.call(wireClaim("sessionId1", user: "ipv4=127.0.0.1"), id: 1)
                else { throw TestFailure.unexpected("no claim answer") }
                #expect(first.outcome == .granted && first.reasonCode == 0 && first.connection > 0)
                // R6: another client is refused a live session, with the reason code the front sends.
                guard case .claimAnswer(let refused) = try client.call(wireClaim("sessionId1", user: "mallory"), id: 2)
                else { throw TestFailure.unexpected("no claim answer") }
                #expect(refused.outcome == .rejected)
                #expect(refused.rejectionReason == RejectionReason.ownedByAnotherClient.rawValue)
                #expect(refused.reasonCode == 0x87)
                // R4 from the same peer: the notice comes before the answer.
                var notices: [LedgerWireMessage] = []
                guard case .claimAnswer(let second) = try client.call(
                    wireClaim("sessionId1", user: "ipv4=127.0.0.1"), id: 3, notices: &notices)
                else { throw TestFailure.unexpected("no claim answer") }
                #expect(second.outcome == .granted && second.replacedConnection == first.connection)
                #expect(notices == [.takenOver(connection: first.connection, sessionName: "sessionId1")])
                // The old connection's release records nothing; the new one's is recorded.
                let stale = try client.call(.release(WireRelease(connection: first.connection, sessionName: "sessionId1", reason: 1)), id: 4)
                #expect(stale == .releaseAnswer(WireReleaseAnswer(outcome: .nothingToRecord)))
                guard case .releaseAnswer(let released) = try client.call(
                    .release(WireRelease(connection: second.connection, sessionName: "sessionId1", reason: 1)), id: 5)
                else { throw TestFailure.unexpected("no release answer") }
                #expect(released.outcome == .recorded && released.sequence > second.sequence)
                // Custody's own listener on the same ledger, same sequence.
                let (pub, _, pubError) = try run("/usr/bin/mosquitto_pub", [
                    "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "ipv4=127.0.0.1", "-i", "sessionId2", "-t", "t", "-m", "x",
                ])
                #expect(pub == 0, "\(pubError)")
                try custody.waitForEvent { $0.sessionName.value == "sessionId2" && $0.kind == .disconnected(.clientInitiatedDisconnect) }
                let events = try custody.events().map { "\($0.kind.name) \($0.kind.reasonName ?? "-") \($0.authenticationName) \($0.sessionName)" }
                #expect(events == [
                    "connected - ipv4=127.0.0.1 sessionId1",
                    "rejected ownedByAnotherClient mallory sessionId1",
                    "disconnected sessionTakenOver ipv4=127.0.0.1 sessionId1",
                    "connected - ipv4=127.0.0.1 sessionId1",
                    "disconnected clientInitiatedDisconnect ipv4=127.0.0.1 sessionId1",
                    "connected - ipv4=127.0.0.1 sessionId2",
                    "disconnected clientInitiatedDisconnect ipv4=127.0.0.1 sessionId2",
                ])
            }
        }
    }

    @Test func aTakeoverThroughCustodysOwnListenerReachesThePeer() async throws {
        try await offPool {
            let path = try ledgerSocketPath("cross")
            try withCustody("ledger-cross", ["--ledger-socket", path, "--connects-per-second-per-session", "0"]) { custody in
                let client = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let held) = try client.call(wireClaim("shared", user: "alice"), id: 1)
                else { throw TestFailure.unexpected("no claim answer") }
                #expect(held.outcome == .granted)
                let (pub, _, pubError) = try run("/usr/bin/mosquitto_pub", [
                    "-h", "127.0.0.1", "-p", "\(custody.port)", "-u", "alice", "-i", "shared", "-t", "t", "-m", "x",
                ])
                #expect(pub == 0, "\(pubError)")
                // Unsolicited, request id 0.
                let notice = try client.receive()
                #expect(notice == LedgerWireFrame(requestID: 0, message: .takenOver(connection: held.connection, sessionName: "shared")))
                // Its connection is no longer the peer's: nothing to release, nothing authorized.
                #expect(try client.call(.authorize(WireAuthorize(connection: held.connection, action: .publish, topic: "t")), id: 2)
                    == .authorizeAnswer(false))
                #expect(try client.call(.release(WireRelease(connection: held.connection, sessionName: "shared", reason: 1)), id: 3)
                    == .releaseAnswer(WireReleaseAnswer(outcome: .nothingToRecord)))
            }
        }
    }

    @Test func authorizationComesFromTheConfigurationDecidedAtTheClaim() async throws {
        try await offPool {
            let path = try ledgerSocketPath("acl")
            let acl = scratchDirectory("acl") + ".acl"
            try "user alice\ntopic readwrite fleet/#\n".write(toFile: acl, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: acl) }
            try withCustody("ledger-acl", ["--ledger-socket", path, "--acl-file", acl]) { _ in
                let client = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let grant) = try client.call(wireClaim("a1", user: "alice"), id: 1)
                else { throw TestFailure.unexpected("no claim answer") }
                let ask = { (action: WireAuthorize.Action, topic: String) throws -> LedgerWireMessage in
                    try client.call(.authorize(WireAuthorize(connection: grant.connection, action: action, topic: topic)), id: 2)
                }
                #expect(try ask(.publish, "fleet/truck-1") == .authorizeAnswer(true))
                #expect(try ask(.publish, "secrets/a") == .authorizeAnswer(false))
                #expect(try ask(.subscribe, "fleet/+/status") == .authorizeAnswer(true))
                #expect(try ask(.subscribe, "#") == .authorizeAnswer(false))
                // A connection the ledger never granted this peer is allowed nothing.
                #expect(try client.call(.authorize(WireAuthorize(connection: 999_999, action: .publish, topic: "fleet/x")), id: 3)
                    == .authorizeAnswer(false))
            }
        }
    }

    @Test func aReloadDecidesTheClaimsThatFollow() async throws {
        try await offPool {
            let path = try ledgerSocketPath("reload")
            let acl = scratchDirectory("acl-reload") + ".acl"
            try "user alice\ntopic readwrite fleet/#\n".write(toFile: acl, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: acl) }
            try withCustody("ledger-reload", ["--ledger-socket", path, "--acl-file", acl]) { custody in
                let client = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let before) = try client.call(wireClaim("r1", user: "alice"), id: 1) else {
                    throw TestFailure.unexpected("no claim answer")
                }
                #expect(try client.call(.authorize(WireAuthorize(connection: before.connection, action: .publish, topic: "depot/1")), id: 2)
                    == .authorizeAnswer(false))
                try "user alice\ntopic readwrite depot/#\n".write(toFile: acl, atomically: true, encoding: .utf8)
                kill(custody.process.processIdentifier, SIGHUP)
                try custody.waitForOutput(containing: "SIGHUP: registry reloaded", timeout: 10)
                guard case .claimAnswer(let after) = try client.call(wireClaim("r2", user: "alice"), id: 3) else {
                    throw TestFailure.unexpected("no claim answer")
                }
                #expect(try client.call(.authorize(WireAuthorize(connection: after.connection, action: .publish, topic: "depot/1")), id: 4)
                    == .authorizeAnswer(true))
                // Decided once per claim: the connection granted before keeps what it had.
                #expect(try client.call(.authorize(WireAuthorize(connection: before.connection, action: .publish, topic: "depot/1")), id: 5)
                    == .authorizeAnswer(false))
            }
        }
    }

    @Test(arguments: [
        ("another version", [0, 0, 0, 6, 2, 0x01, 0, 0, 0, 1] as [UInt8], WireErrorCode.unsupportedVersion),
        ("a length below the header", [0, 0, 0, 3, 1, 0x01, 0], .malformedFrame),
        ("a length above the maximum", [0, 0x10, 0, 0, 1], .frameTooLarge),
        ("an unknown type", [0, 0, 0, 6, 1, 0x42, 0, 0, 0, 1], .unknownFrameType),
        ("an answer sent by the peer", [0, 0, 0, 7, 1, 0x83, 0, 0, 0, 1, 1], .unknownFrameType),
        ("a claim cut short", [0, 0, 0, 8, 1, 0x01, 0, 0, 0, 1, 0, 4], .malformedFrame),
    ])
    func aPeerThatDoesNotSpeakTheProtocolGetsAnErrorFrameAndIsClosed(_ what: String, _ bytes: [UInt8], _ code: WireErrorCode)
        async throws
    {
        try await offPool {
            let path = try ledgerSocketPath("refuse")
            try withCustody("ledger-refuse", ["--ledger-socket", path]) { custody in
                let client = try LedgerSocketClient(path: path)
                client.send(raw: bytes)
                guard case .error(let received, let detail)? = try client.receive()?.message else {
                    throw TestFailure.unexpected("no error frame for \(what)")
                }
                #expect(received == code, "\(what): \(detail)")
                #expect(try client.receive() == nil, "closed after the error frame")
                // Nothing was granted, and the next peer is served.
                let next = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let answer) = try next.call(wireClaim("after", user: "alice")) else {
                    throw TestFailure.unexpected("no claim answer")
                }
                #expect(answer.outcome == .granted)
                #expect(try custody.events().filter { $0.kind == .connected }.count == 1)
                try custody.waitForLog("ledger peer refused")
            }
        }
    }

    @Test func aPeerThatGoesAwayEndsItsConnectionsAndAShutdownEndsTheRest() async throws {
        try await offPool {
            let path = try ledgerSocketPath("gone")
            try withCustody("ledger-gone", ["--ledger-socket", path]) { custody in
                var client: LedgerSocketClient? = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let lost) = try client!.call(wireClaim("lost", user: "alice")) else {
                    throw TestFailure.unexpected("no claim answer")
                }
                client = nil  // closed
                try custody.waitForEvent { $0.connection == lost.connection && $0.kind == .disconnected(.connectionLost) }
                let staying = try LedgerSocketClient(path: path)
                guard case .claimAnswer(let kept) = try staying.call(wireClaim("kept", user: "alice")) else {
                    throw TestFailure.unexpected("no claim answer")
                }
                custody.stop()
                #expect(custody.stdout.contains("socket_connections_ended=1"), "\(custody.stdout)")
                let ended = try custody.events().last
                #expect(ended?.connection == kept.connection)
                #expect(ended?.kind == .disconnected(.serverInitiatedDisconnect))
                #expect(!FileManager.default.fileExists(atPath: path), "the socket file is removed")
            }
        }
    }

    @Test func aSocketServedElsewhereOrAFileInTheWayStopsStartUp() async throws {
        try await offPool {
            let path = try ledgerSocketPath("taken")
            try withCustody("ledger-taken", ["--ledger-socket", path]) { _ in
                let other = scratchDirectory("ledger-taken-2")
                defer { try? FileManager.default.removeItem(atPath: other) }
                let (status, _, error) = try run(product: "custody", [
                    "--data-dir", other, "--listen", "127.0.0.1:0", "--ledger-socket", path,
                ])
                #expect(status == 1)
                #expect(error.contains("ledger socket \(path) is served by another process"), "\(error)")
            }
            let file = try ledgerSocketPath("file")
            try "not a socket".write(toFile: file, atomically: true, encoding: .utf8)
            let data = scratchDirectory("ledger-file")
            defer { try? FileManager.default.removeItem(atPath: data) }
            let (status, _, error) = try run(product: "custody", ["--data-dir", data, "--listen", "127.0.0.1:0", "--ledger-socket", file])
            #expect(status == 1)
            #expect(error.contains("ledger socket \(file) exists and is not a socket"), "\(error)")
            #expect(FileManager.default.fileExists(atPath: file), "left alone")
        }
    }

    @Test func aLedgerOnlyConfigurationHasNoListeners() async throws {
        try await offPool {
            let path = try ledgerSocketPath("only")
            let data = scratchDirectory("ledger-only")
            let file = data + ".yaml"
            try "dataDir: \(data)\nlisteners: []\nledgerSocket: \(path)\n".write(toFile: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: file) }
            let custody = try RunningCustody("ledger-only", arguments: ["--config", file], directory: data, ownFlags: true)
            defer { custody.cleanUp() }
            #expect(custody.port == 0)
            #expect(!custody.stdout.contains("custody: listening"))
            let client = try LedgerSocketClient(path: path)
            guard case .claimAnswer(let answer) = try client.call(wireClaim("only", user: "alice")) else {
                throw TestFailure.unexpected("no claim answer")
            }
            #expect(answer.outcome == .granted)

            // Without a ledger socket, no listener is an error naming the file, line and key.
            let bad = data + "-bad.yaml"
            try "listeners: []\n".write(toFile: bad, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: bad) }
            let (status, _, error) = try run(product: "custody", ["--check-config", bad])
            #expect(status == 1)
            #expect(error.contains("\(bad):1"), "\(error)")
            #expect(error.contains("listeners"), "\(error)")
            #expect(error.contains("ledgerSocket"), "\(error)")
        }
    }
}
