import CustodyModel
import CustodyConfig
import CustodyTesting
import Foundation
import LedgerCore
import Testing

@testable import CustodyTLS

/// Every validation scheme against real certificates (made by openssl, read by
/// `CertificateIdentity(der:)` as the TLS listener reads them): the match is accepted, a
/// mismatch refused, and the refusal says why.
@Suite("Validation schemes with real certificates", .serialized)
struct ValidationSchemeTests {
    let certificates: TestCertificates

    /// openssl runs for a while: off the pool.
    init() async throws {
        certificates = try await offPool {
            let certificates = try TestCertificates()
            // Extra CA-issued certificates: one field per scheme, matching "device-1"'s neighbours.
            try certificates.run("""
                set -e
                key='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'
                printf 'subjectAltName=DNS:other.example,URI:urn:device:2,IP:10.9.9.9,email:other@example.org\\n' > other.ext
                openssl req $key -keyout other.key -out other.csr -subj '/CN=device-2' 2>/dev/null
                openssl x509 -req -in other.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out other.pem -days 2 -extfile other.ext 2>/dev/null
                """)
            return certificates
        }
    }

    func identity(_ name: String, chainVerified: Bool = true) throws -> CertificateIdentity {
        let pem = try String(contentsOfFile: certificates.path(name), encoding: .utf8)
        let base64 = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        let der = try #require(Data(base64Encoded: base64))
        return try CertificateIdentity(der: Array(der), chainVerified: chainVerified)
    }

    func authenticator(name: String, scheme: String, thumbprints: [String] = []) throws -> Authenticator {
        var yaml = "namespace: { registeredClientsOnly: true }\nclients:\n  - { authenticationName: '\(name)', validationScheme: \(scheme)"
        if !thumbprints.isEmpty { yaml += ", allowedThumbprints: [\(thumbprints.joined(separator: ", "))]" }
        yaml += " }\n"
        return Authenticator(configuration: try CustodyConfiguration.parse(yaml: yaml, file: "t.yaml"), passwords: nil)
    }

    @Test(arguments: [
        ("SubjectMatchesAuthenticationName", "device-1"),
        ("DnsMatchesAuthenticationName", "device-1.example"),
        ("UriMatchesAuthenticationName", "urn:device:1"),
        ("IpMatchesAuthenticationName", "10.1.2.3"),
        ("EmailMatchesAuthenticationName", "d1@example.org"),
    ])
    func aSchemeAcceptsItsFieldAndRefusesAnother(scheme: String, name: String) throws {
        let auth = try authenticator(name: name, scheme: scheme)
        let matching = try identity("client.pem")
        let other = try identity("other.pem")
        let accepted = auth.decide(ConnectCredentials(username: name, password: nil, sessionName: "s1", certificate: matching))
        #expect(accepted.verdict == .authenticated, "\(accepted.detail)")
        let refused = auth.decide(ConnectCredentials(username: name, password: nil, sessionName: "s1", certificate: other))
        #expect(refused.verdict == .authenticationFailed)
        #expect(refused.detail.contains("does not match"), "\(refused.detail)")
        // Certificate refusals are "not authorized" (0x87), not "bad user name or password" (0x86).
        #expect(!refused.badUserNameOrPassword)
    }

    @Test func thumbprintMatchAcceptsItsSelfSignedCertificateOnly() async throws {
        try await offPool {
            let thumbprint = try certificates.fingerprint("self.pem")
            let auth = try authenticator(name: "self-1", scheme: "ThumbprintMatch", thumbprints: [thumbprint])
            let selfSigned = try identity("self.pem", chainVerified: false)
            #expect(selfSigned.thumbprint == thumbprint)
            let accepted = auth.decide(ConnectCredentials(username: "self-1", password: nil, sessionName: "s", certificate: selfSigned))
            #expect(accepted.verdict == .authenticated)
            // Same name, another certificate: refused.
            let other = try identity("client.pem", chainVerified: false)
            let refused = auth.decide(ConnectCredentials(username: "self-1", password: nil, sessionName: "s", certificate: other))
            #expect(refused.verdict == .authenticationFailed && refused.detail.contains("thumbprint"))
            // A self-signed certificate naming a subject-scheme client proves nothing.
            let subject = try authenticator(name: "self-1", scheme: "SubjectMatchesAuthenticationName")
            let unproven = subject.decide(ConnectCredentials(username: "self-1", password: nil, sessionName: "s", certificate: selfSigned))
            #expect(unproven.verdict == .authenticationFailed && unproven.detail.contains("ThumbprintMatch"))
        }
    }

    @Test func passwordRefusalsAreBadUserNameOrPassword() throws {
        let passwords = try PasswordFile(parsing: PasswordFile.entry(username: "alice", password: Array("right".utf8)), file: "p")
        let auth = Authenticator(configuration: CustodyConfiguration(), passwords: passwords)
        let wrong = auth.decide(ConnectCredentials(username: "alice", password: Array("wrong".utf8), sessionName: "s", certificate: nil))
        #expect(wrong.verdict == .authenticationFailed && wrong.badUserNameOrPassword)
        let right = auth.decide(ConnectCredentials(username: "alice", password: Array("right".utf8), sessionName: "s", certificate: nil))
        #expect(right.verdict == .authenticated && !right.badUserNameOrPassword)
    }
}
