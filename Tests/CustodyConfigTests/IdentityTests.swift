import CustodyTesting
import CustodyModel
import Foundation
import LedgerCore
import Testing

@testable import CustodyConfig

@Suite("Identity: registry, certificates and passwords")
struct IdentityTests {
    static let thumbprint = String(repeating: "ab", count: 32)
    static let otherThumbprint = String(repeating: "cd", count: 32)

    func authenticator(_ yaml: String, passwords: PasswordFile? = nil) throws -> Authenticator {
        Authenticator(configuration: try CustodyConfiguration.parse(yaml: yaml, file: "t.yaml"), passwords: passwords)
    }

    func connect(_ username: String?, session: String = "s1", password: String? = nil, certificate: CertificateIdentity? = nil)
        -> ConnectCredentials
    {
        ConnectCredentials(username: username, password: password.map { Array($0.utf8) }, sessionName: session, certificate: certificate)
    }

    @Test func withoutConfigurationEveryUsernameIsBelieved() throws {
        let open = try authenticator("")
        let decision = open.decide(connect("ipv4=127.0.0.1"))
        #expect(decision.verdict == .authenticated && decision.authenticationName.value == "ipv4=127.0.0.1")
        // No Username: the session name is the client (a single-session client).
        #expect(open.decide(connect(nil, session: "sensor-9")).authenticationName.value == "sensor-9")
    }

    @Test func alternativeSourcesNameTheClientInOrder() throws {
        let auth = try authenticator("namespace: { alternativeAuthenticationNameSources: [ClientCertificateUri, ClientCertificateDns] }")
        let certificate = CertificateIdentity(
            subjectCommonName: "cn-name", dnsNames: ["dns.example"], uris: [], thumbprint: Self.thumbprint)
        #expect(auth.decide(connect(nil, certificate: certificate)).authenticationName.value == "dns.example")
        var withURI = certificate
        withURI.uris = ["urn:device:7"]
        #expect(auth.decide(connect(nil, certificate: withURI)).authenticationName.value == "urn:device:7")
        // A Username always wins; no certificate field applies: the session name.
        #expect(auth.decide(connect("named", certificate: withURI)).authenticationName.value == "named")
        var bare = certificate
        bare.dnsNames = []
        #expect(auth.decide(connect(nil, session: "s-77", certificate: bare)).authenticationName.value == "s-77")
        var unverified = withURI
        unverified.chainVerified = false
        #expect(auth.decide(connect(nil, session: "s-78", certificate: unverified)).authenticationName.value == "s-78")
    }

    @Test func theRegistryDecides() throws {
        let auth = try authenticator("""
            namespace: { registeredClientsOnly: true }
            clients:
              - { authenticationName: Device-1 }
              - { authenticationName: device-2, state: Disabled }
              - { authenticationName: device-3, validationScheme: DnsMatchesAuthenticationName }
              - { authenticationName: device-4, validationScheme: ThumbprintMatch, allowedThumbprints: [\(Self.thumbprint), \(Self.otherThumbprint)] }
              - { authenticationName: device-5, validationScheme: IpMatchesAuthenticationName }
              - { authenticationName: me@example.org, validationScheme: EmailMatchesAuthenticationName }
              - { authenticationName: urn:x, validationScheme: UriMatchesAuthenticationName }
            """)
        func certificate(cn: String? = nil, dns: [String] = [], uris: [String] = [], ips: [String] = [], emails: [String] = [],
                         thumbprint: String = IdentityTests.otherThumbprint) -> CertificateIdentity {
            CertificateIdentity(subjectCommonName: cn, dnsNames: dns, uris: uris, ipAddresses: ips, emails: emails, thumbprint: thumbprint)
        }
        // Subject (default scheme), compared like authentication names: case-insensitively.
        #expect(auth.decide(connect("device-1", certificate: certificate(cn: "DEVICE-1"))).verdict == .authenticated)
        #expect(auth.decide(connect("device-1", certificate: certificate(cn: "device-9"))).verdict == .authenticationFailed)
        // A Username that is not the certificate's is refused, even for a registered name.
        #expect(auth.decide(connect("device-3", certificate: certificate(dns: ["device-4"]))).verdict == .authenticationFailed)
        #expect(auth.decide(connect("device-3", certificate: certificate(dns: ["x", "device-3"]))).verdict == .authenticated)
        #expect(auth.decide(connect("device-4", certificate: certificate())).verdict == .authenticated)
        #expect(auth.decide(connect("device-4", certificate: certificate(thumbprint: String(repeating: "0", count: 64)))).verdict
            == .authenticationFailed)
        #expect(auth.decide(connect("device-5", certificate: certificate(ips: ["device-5"]))).verdict == .authenticated)
        #expect(auth.decide(connect("me@example.org", certificate: certificate(emails: ["ME@example.org"]))).verdict == .authenticated)
        #expect(auth.decide(connect("urn:x", certificate: certificate(uris: ["urn:y"]))).verdict == .authenticationFailed)
        // Unknown, disabled, and registered but proving nothing.
        #expect(auth.decide(connect("stranger", certificate: certificate(cn: "stranger"))).verdict == .unknownClient)
        #expect(auth.decide(connect("device-2", certificate: certificate(cn: "device-2"))).verdict == .clientDisabled)
        #expect(auth.decide(connect("device-1")).verdict == .authenticationFailed)
        // A self-signed certificate proves its thumbprint, not the names it carries.
        var selfSigned = certificate(cn: "device-1")
        selfSigned.chainVerified = false
        #expect(auth.decide(connect("device-1", certificate: selfSigned)).verdict == .authenticationFailed)
        var selfSignedByThumbprint = certificate()
        selfSignedByThumbprint.chainVerified = false
        #expect(auth.decide(connect("device-4", certificate: selfSignedByThumbprint)).verdict == .authenticated)
        // Several sessions of one client authenticate with the same certificate.
        for session in ["a", "b", "c"] {
            #expect(auth.decide(connect("device-1", session: session, certificate: certificate(cn: "device-1"))).verdict == .authenticated)
        }
    }

    @Test func passwordsAreCheckedBeforeTheRegistry() throws {
        let passwords = try PasswordFile(parsing: PasswordFile.entry(username: "alice", password: Array("right".utf8)), file: "p")
        let auth = try authenticator("", passwords: passwords)
        #expect(auth.decide(connect("alice", password: "right")).verdict == .authenticated)
        #expect(auth.decide(connect("alice", password: "wrong")).verdict == .authenticationFailed)
        #expect(auth.decide(connect("alice")).verdict == .authenticationFailed)
        #expect(auth.decide(connect("mallory", password: "right")).verdict == .authenticationFailed)
        #expect(auth.decide(connect(nil, password: "right")).verdict == .authenticationFailed)
        // A registered client may prove itself with its password instead of a certificate.
        let registered = try authenticator(
            "namespace: { registeredClientsOnly: true }\nclients: [{ authenticationName: alice }]", passwords: passwords)
        #expect(registered.decide(connect("alice", password: "right")).verdict == .authenticated)
    }
}

@Suite("Password file (Mosquitto's format)")
struct PasswordFileTests {
    /// Runs Debian's mosquitto_passwd, which the README's set-up installs.
    func mosquittoPasswd(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_passwd")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "mosquitto_passwd \(arguments)")
    }

    func temporaryFile() -> String {
        scratchDirectory("passwd")
    }

    @Test func readsWhatMosquittoPasswdWrites() async throws {
        try await offPool {
            let path = temporaryFile()
            defer { try? FileManager.default.removeItem(atPath: path) }
            try mosquittoPasswd(["-b", "-c", path, "alice", "secret pass"])
            try mosquittoPasswd(["-b", path, "bob", "hunter2"])
            try mosquittoPasswd(["-H", "sha512", "-b", path, "carol", "ünïcode"])
            let file = try PasswordFile.load(file: path)
            #expect(file.usernames == ["alice", "bob", "carol"])
            #expect(file.verify(username: "alice", password: Array("secret pass".utf8)))
            #expect(!file.verify(username: "alice", password: Array("secret pas".utf8)))
            #expect(file.verify(username: "bob", password: Array("hunter2".utf8)))
            #expect(!file.verify(username: "bob", password: Array("secret pass".utf8)))
            #expect(file.verify(username: "carol", password: Array("ünïcode".utf8)))
            #expect(!file.verify(username: "dave", password: Array("hunter2".utf8)))
        }
    }

    @Test func writesWhatMosquittoReads() async throws {
        try await offPool {
            // Our entry in a file given to the real mosquitto broker: it must accept the password.
            let directory = temporaryFile()
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            try (PasswordFile.entry(username: "alice", password: Array("s3cret".utf8)) + "\n")
                .write(toFile: directory + "/passwd", atomically: true, encoding: .utf8)
            // A free port (a random one may be another test's ephemeral port).
            let port = try freeLoopbackPort()
            try """
                listener \(port) 127.0.0.1
                allow_anonymous false
                password_file \(directory)/passwd
                """.write(toFile: directory + "/mosquitto.conf", atomically: true, encoding: .utf8)
            let broker = Process()
            broker.executableURL = URL(fileURLWithPath: "/usr/sbin/mosquitto")
            broker.arguments = ["-c", directory + "/mosquitto.conf"]
            broker.standardError = FileHandle.nullDevice
            try broker.run()
            defer {
                kill(broker.processIdentifier, SIGKILL)
                broker.waitUntilExit()
            }
            func publish(_ password: String) throws -> Int32 {
                let client = Process()
                client.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_pub")
                client.arguments = ["-h", "127.0.0.1", "-p", "\(port)", "-u", "alice", "-P", password, "-t", "t", "-m", "m", "-i", "p-\(password)"]
                client.standardError = FileHandle.nullDevice
                try client.run()
                client.waitUntilExit()
                return client.terminationStatus
            }
            // The broker may still be starting (slowly on a loaded machine): up to 60 s.
            let deadline = Date().addingTimeInterval(60)
            while !acceptsConnections(port: port), broker.isRunning, Date() < deadline { usleep(100_000) }
            #expect(broker.isRunning, "mosquitto exited before it took connections")
            var status = try publish("s3cret")
            for _ in 0..<20 where status != 0 {
                usleep(100_000)
                status = try publish("s3cret")
            }
            #expect(status == 0)
            #expect(try publish("wrong") != 0)
        }
    }

    @Test(arguments: [
        "alice", "alice:plain", ":$7$101$AAAA$AAAA", "alice:$7$x$c2FsdA==$aGFzaA==", "alice:$7$101$c2FsdA==$aGFzaA==",
    ])
    func refusesLinesItCannotUse(line: String) {
        #expect(throws: ConfigurationError.self) { try PasswordFile(parsing: line, file: "p") }
    }

    @Test func refusesAUserListedTwiceAndNamesTheLine() throws {
        let entry = PasswordFile.entry(username: "alice", password: Array("x".utf8))
        do {
            _ = try PasswordFile(parsing: "# users\n\(entry)\n\(entry)\n", file: "p")
            Issue.record("accepted a duplicate")
        } catch {
            #expect(error.line == 3)
        }
    }
}
