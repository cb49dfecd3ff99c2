import CustodyTesting
import Foundation
import Testing

// HTTP publish over https with client certificates (issue 21): the certificate is a way in,
// deciding as it does for an MQTT CONNECT (registry, validation schemes, thumbprints), and the
// name it proves is the one authorization binds.

@Suite("HTTP publish: client certificates on https", .serialized)
struct HTTPPublishCertificateTests {
    let certificates: IdentityCertificates

    init() async throws {
        certificates = try await offPool { try IdentityCertificates() }
    }

    @Test func aClientCertificateSignsInOverHTTPS() async throws {
        try await offPool {
            let thumbprint = try certificates.thumbprint("self")
            let caPort = try freeLoopbackPort()
            let selfPort = try freeLoopbackPort()
            let config = certificates.path("https-certs.yaml")
            try """
                listeners:
                  - { protocol: mqtt, address: 127.0.0.1:0 }
                  - { protocol: https, address: "127.0.0.1:\(caPort)", certificate: server.pem, privateKey: server.key,
                      clientCertificates: optional, trustedCertificates: [ca.pem] }
                  - { protocol: https, address: "127.0.0.1:\(selfPort)", certificate: server.pem, privateKey: server.key,
                      clientCertificates: optional }
                namespace:
                  alternativeAuthenticationNameSources: [ClientCertificateSubject]
                  registeredClientsOnly: true
                clients:
                  - { authenticationName: device-7 }
                  - { authenticationName: device-1 }
                  - { authenticationName: self-1, validationScheme: ThumbprintMatch, allowedThumbprints: [\(thumbprint)] }
                  - { authenticationName: device-off, state: Disabled }
                clientGroups:
                  - { name: writers, query: "authenticationName IN ['device-7', 'self-1']" }
                topicSpaces:
                  - { name: factory, topicTemplates: ["factory/#"] }
                permissionBindings:
                  - { name: pub, clientGroupName: writers, topicSpaceName: factory, permission: Publisher }
                """.write(toFile: config, atomically: true, encoding: .utf8)
            let custody = try RunningCustody("https-certs", arguments: ["--config", config])
            defer { custody.cleanUp() }
            try custody.waitForOutput(containing: "custody: listening https 127.0.0.1:\(selfPort)", timeout: 20)
            func post(_ port: Int, _ client: String?) throws -> Int {
                var options = ["--cacert", certificates.path("ca.pem")]
                if let client { options += ["--cert", certificates.path("\(client).pem"), "--key", certificates.path("\(client).key")] }
                return try curlPost(
                    "https://127.0.0.1:\(port)/mqtt/messages?topic=factory/line-1", options: options, body: "x").status
            }
            // CA-issued: the subject names the client; the binding decides.
            #expect(try post(caPort, "device-7") == 204)
            #expect(try post(caPort, "device-1") == 403, "device-1 is known but not a publisher")
            #expect(try post(caPort, "device-off") == 401, "disabled")
            #expect(try post(caPort, nil) == 401, "no certificate, no Authorization")
            // Self-signed: known by its thumbprint only.
            #expect(try post(selfPort, "self") == 204)
            #expect(try post(selfPort, "self-other") == 401, "same subject, another key")
            // A certificate of a CA the listener does not trust fails the handshake.
            let (status, _, _) = try run("/usr/bin/curl", [
                "-s", "-o", "/dev/null", "--cacert", certificates.path("ca.pem"), "--cert", certificates.path("rogue.pem"),
                "--key", certificates.path("rogue.key"), "-X", "POST", "--data-binary", "x",
                "https://127.0.0.1:\(caPort)/mqtt/messages?topic=factory/line-1",
            ], timeout: 20)
            #expect(status != 0, "curl: the handshake must fail")
        }
    }
}
