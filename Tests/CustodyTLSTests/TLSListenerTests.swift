import CustodyTesting
import CustodyModel
import CustodyConfig
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import Testing
import X509

@testable import CustodyTLS

/// Certificates made by the openssl command in a temporary folder: a CA, a server
/// certificate for 127.0.0.1, a CA-issued client certificate with every kind of subject
/// alternative name, and a self-signed client certificate. Made (openssl runs for a while) and
/// asked (`fingerprint`) off the pool, with `offPool`.
final class TestCertificates: Sendable {
    let directory: String

    init() throws {
        directory = scratchDirectory("tls")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
        try run("""
            set -e
            openssl req -x509 \(key) -keyout ca.key -out ca.pem -days 2 -subj '/CN=Custody Test CA' 2>/dev/null
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext
            openssl req \(key) -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
            printf 'subjectAltName=DNS:device-1.example,URI:urn:device:1,IP:10.1.2.3,IP:::1,email:d1@example.org\\n' > client.ext
            openssl req \(key) -keyout client.key -out client.csr -subj '/O=Custody/CN=device-1' 2>/dev/null
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
            openssl req -x509 \(key) -keyout self.key -out self.pem -days 2 -subj '/CN=self-1' 2>/dev/null
            """)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func path(_ name: String) -> String { directory + "/" + name }

    @discardableResult
    func run(_ script: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TLSSetupError("openssl failed: \(script)") }
        return String(decoding: data, as: UTF8.self)
    }

    /// openssl's own SHA-256 fingerprint of a certificate, as 64 lowercase hex digits.
    func fingerprint(_ name: String) throws -> String {
        let line = try run("openssl x509 -in \(name) -noout -fingerprint -sha256")
        return String(line.split(separator: "=").last!.filter(\.isHexDigit)).lowercased()
    }

    func listener(_ clientCertificates: ListenerConfiguration.ClientCertificates, trusted: Bool) -> ListenerConfiguration {
        var listener = ListenerConfiguration(kind: .mqtts, host: "127.0.0.1", port: 0)
        listener.certificate = path("server.pem")
        listener.privateKey = path("server.key")
        listener.clientCertificates = clientCertificates
        listener.trustedCertificates = trusted ? [path("ca.pem")] : []
        return listener
    }
}

/// What the server side saw of one connection.
final class Observed: Sendable {
    let identity = Mutex<CertificateIdentity??>(nil)
}

/// Reports the peer's identity once the handshake completes, then answers "ok".
final class IdentityProbe: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let setup: TLSListenerSetup
    let observed: Observed

    init(setup: TLSListenerSetup, observed: Observed) {
        self.setup = setup
        self.observed = observed
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            let observed = self.observed
            let channel = context.channel
            setup.peerIdentity(of: channel).whenComplete { result in
                observed.identity.withLock { $0 = .some((try? result.get()) ?? nil) }
                channel.writeAndFlush(ByteBuffer(string: "ok"), promise: nil)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Collects what the server sends.
final class Reply: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let text = Mutex("")
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let chunk = buffer.readString(length: buffer.readableBytes) ?? ""
        text.withLock { $0 += chunk }
    }
}

@Suite("TLS listeners", .serialized)
struct TLSListenerTests {
    /// Runs one TLS connection from a client holding `certificate` (or none) and returns
    /// whether the server answered, and the identity it saw.
    func handshake(
        _ listener: ListenerConfiguration, certificates: TestCertificates, client certificate: String?,
        maximumVersion: TLSVersion = .tlsv13
    ) async throws -> (answered: Bool, identity: CertificateIdentity?) {
        let setup = try TLSListenerSetup(listener)
        let observed = Observed()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let result = try await connect(setup: setup, observed: observed, group: group, certificates: certificates,
                                           client: certificate, maximumVersion: maximumVersion)
            try await group.shutdownGracefully()
            return result
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    func connect(
        setup: TLSListenerSetup, observed: Observed, group: MultiThreadedEventLoopGroup, certificates: TestCertificates,
        client certificate: String?, maximumVersion: TLSVersion
    ) async throws -> (answered: Bool, identity: CertificateIdentity?) {
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(setup.makeHandler())
                    try channel.pipeline.syncOperations.addHandler(IdentityProbe(setup: setup, observed: observed))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()

        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(certificates.path("ca.pem")))
        configuration.maximumTLSVersion = maximumVersion
        if maximumVersion == .tlsv11 || maximumVersion == .tlsv1 { configuration.minimumTLSVersion = .tlsv1 }
        if let certificate {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificates.path("\(certificate).pem")).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: certificates.path("\(certificate).key"), format: .pem))
        }
        let context = try NIOSSLContext(configuration: configuration)
        let reply = Reply()
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHandler(reply)
                }
            }
            .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
        for _ in 0..<200 where reply.text.withLock({ $0 }) != "ok" && client.isActive {
            try await Task.sleep(for: .milliseconds(10))
        }
        try? await client.close()
        try? await server.close()
        let answered = reply.text.withLock { $0 } == "ok"
        return (answered, observed.identity.withLock { $0 ?? nil })
    }

    @Test func aCAIssuedClientCertificateNamesItsHolder() async throws {
        let certificates = try await offPool { try TestCertificates() }
        let (answered, identity) = try await handshake(certificates.listener(.required, trusted: true), certificates: certificates, client: "client")
        #expect(answered)
        let seen = try #require(identity)
        #expect(seen.subjectCommonName == "device-1")
        #expect(seen.dnsNames == ["device-1.example"])
        #expect(seen.uris == ["urn:device:1"])
        #expect(seen.ipAddresses == ["10.1.2.3", "::1"])
        #expect(seen.emails == ["d1@example.org"])
        #expect(seen.chainVerified)
        #expect(seen.thumbprint == (try await offPool { try certificates.fingerprint("client.pem") }))
        // Its chain (the webhook's clientCertificateChain): the certificate, then the CA that signed it.
        #expect(seen.chainPEM.count == 2)
        #expect(try seen.chainPEM.map { try Certificate(pemEncoded: $0) }
            == ["client.pem", "ca.pem"].map { try Certificate(pemEncoded: String(contentsOfFile: certificates.path($0), encoding: .utf8)) })
    }

    @Test func requiredMeansNoHandshakeWithoutATrustedCertificate() async throws {
        let certificates = try await offPool { try TestCertificates() }
        let listener = certificates.listener(.required, trusted: true)
        #expect(try await handshake(listener, certificates: certificates, client: nil).answered == false)
        #expect(try await handshake(listener, certificates: certificates, client: "self").answered == false)
    }

    @Test func optionalAcceptsClientsWithoutACertificate() async throws {
        let certificates = try await offPool { try TestCertificates() }
        let listener = certificates.listener(.optional, trusted: true)
        let bare = try await handshake(listener, certificates: certificates, client: nil)
        #expect(bare.answered && bare.identity == nil)
        let withCertificate = try await handshake(listener, certificates: certificates, client: "client")
        #expect(withCertificate.answered && withCertificate.identity?.subjectCommonName == "device-1")
        // Optional still verifies what is presented.
        #expect(try await handshake(listener, certificates: certificates, client: "self").answered == false)
    }

    @Test func withoutTrustedCAsSelfSignedCertificatesAreKnownByThumbprint() async throws {
        let certificates = try await offPool { try TestCertificates() }
        let (answered, identity) = try await handshake(certificates.listener(.required, trusted: false), certificates: certificates, client: "self")
        #expect(answered)
        let seen = try #require(identity)
        #expect(!seen.chainVerified)
        #expect(seen.thumbprint == (try await offPool { try certificates.fingerprint("self.pem") }))
        #expect(seen.chainPEM.count == 1)
        #expect(try await handshake(certificates.listener(.required, trusted: false), certificates: certificates, client: nil).answered == false)
    }

    @Test func noClientCertificatesAskedForByDefault() async throws {
        let certificates = try await offPool { try TestCertificates() }
        let (answered, identity) = try await handshake(certificates.listener(.none, trusted: false), certificates: certificates, client: "client")
        #expect(answered && identity == nil)
    }

    @Test func olderThanTLS12IsRefused() async throws {
        let certificates = try await offPool { try TestCertificates() }
        let listener = certificates.listener(.none, trusted: false)
        #expect(try await handshake(listener, certificates: certificates, client: nil, maximumVersion: .tlsv11).answered == false)
        #expect(try await handshake(listener, certificates: certificates, client: nil, maximumVersion: .tlsv12).answered)
    }

    @Test func unreadableFilesAreNamed() async throws {
        let certificates = try await offPool { try TestCertificates() }
        var listener = certificates.listener(.required, trusted: true)
        listener.certificate = certificates.path("missing.pem")
        #expect { try TLSListenerSetup(listener) } throws: { "\($0)".contains("missing.pem") }
        listener = certificates.listener(.required, trusted: true)
        listener.privateKey = certificates.path("ca.pem")
        #expect { try TLSListenerSetup(listener) } throws: { "\($0)".contains("private key") }
        listener = certificates.listener(.required, trusted: true)
        listener.trustedCertificates = [certificates.path("nothing.pem")]
        #expect { try TLSListenerSetup(listener) } throws: { "\($0)".contains("nothing.pem") }
    }
}
