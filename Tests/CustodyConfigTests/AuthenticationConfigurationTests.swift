import CustodyConfig
import CustodyTesting
import Foundation
import Testing

// The `authentication:` section: token issuers and the webhook, each mistake named by
// file, line and key.

@Suite("Authentication configuration")
final class AuthenticationConfigurationTests {
    let directory: String

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    init() throws {
        directory = scratchDirectory("auth-config")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try "{\"keys\": []}".write(toFile: directory + "/jwks.json", atomically: true, encoding: .utf8)
        try "-----BEGIN PUBLIC KEY-----\n".write(toFile: directory + "/signer.pem", atomically: true, encoding: .utf8)
    }

    func parse(_ yaml: String) throws(ConfigurationError) -> CustodyConfiguration {
        try CustodyConfiguration.parse(yaml: yaml, file: "custody.yaml", baseDirectory: directory)
    }

    func refusal(_ yaml: String) -> ConfigurationError? {
        do {
            _ = try parse(yaml)
            return nil
        } catch {
            return error
        }
    }

    @Test func theIssuesExampleIsRead() throws {
        setenv("CUSTODY_TEST_AUTH_TOKEN", "abc", 1)
        let configuration = try parse("""
            authentication:
              jwt:
                - issuer: https://login.example/tenant
                  audience: custody
                  keys: [jwks.json, signer.pem]
                  authenticationNameClaim: sub
                  attributeClaims: { area: area, roles: roles }
                  clockSkewSeconds: 60
              webhook:
                endpoint: https://auth.example/mqtt
                timeoutMilliseconds: 2000
                cacheSeconds: 60
                headers: { Authorization: "Bearer ${env:CUSTODY_TEST_AUTH_TOKEN}" }
            """)
        let issuer = try #require(configuration.authentication.jwt.first)
        #expect(issuer.issuer == "https://login.example/tenant")
        #expect(issuer.audience == "custody")
        #expect(issuer.keys == [directory + "/jwks.json", directory + "/signer.pem"])
        #expect(issuer.attributeClaims == ["area": "area", "roles": "roles"])
        #expect(issuer.clockSkewSeconds == 60)
        #expect(issuer.sharedSecret == nil)
        let webhook = try #require(configuration.authentication.webhook)
        #expect(webhook.endpoint == "https://auth.example/mqtt")
        #expect(webhook.headers == ["Authorization": "Bearer abc"])
        #expect(webhook.cacheSeconds == 60)
    }

    @Test func mistakesAreNamed() {
        func check(_ yaml: String, key: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
            let error = refusal(yaml)
            #expect(error?.key == key, "\(error.map { "\($0)" } ?? "accepted")", sourceLocation: sourceLocation)
            #expect(error?.message.contains(message) == true, "\(error.map { "\($0)" } ?? "accepted")", sourceLocation: sourceLocation)
            #expect(error?.line != nil, sourceLocation: sourceLocation)
        }
        check("authentication:\n  webhook:\n    endpoint: http://auth.example/mqtt\n",
              key: "authentication.webhook.endpoint", "loopback")
        check("authentication:\n  webhook:\n    endpoint: ftp://127.0.0.1/x\n", key: "authentication.webhook.endpoint", "not an http(s) URL")
        check("authentication:\n  webhook:\n    endpoint: http://127.0.0.1:9/x\n    headers: { X: \"${env:CUSTODY_NOT_SET_ANYWHERE}\" }\n",
              key: "authentication.webhook.headers.X", "CUSTODY_NOT_SET_ANYWHERE is not set")
        check("authentication:\n  webhook:\n    endpoint: http://127.0.0.1:9/x\n    timeoutMilliseconds: 0\n",
              key: "authentication.webhook.timeoutMilliseconds", "must be from 10")
        check("authentication:\n  jwt:\n    - { issuer: i, audience: a }\n", key: "authentication.jwt[0].keys", "needs keys")
        check("authentication:\n  jwt:\n    - { issuer: i, audience: a, keys: [missing.pem] }\n",
              key: "authentication.jwt[0].keys[0]", "cannot read")
        check("authentication:\n  jwt:\n    - { issuer: i, audience: a, sharedSecret: short }\n",
              key: "authentication.jwt[0].sharedSecret", "at least 32 bytes")
        check("authentication:\n  jwt:\n    - { audience: a, keys: [jwks.json] }\n", key: "authentication.jwt[0].issuer", "missing")
        check("authentication:\n  jwt:\n    - { issuer: i, audience: a, keys: [jwks.json], clockSkew: 5 }\n",
              key: "authentication.jwt[0].clockSkew", "unknown key")
        check("authentication:\n  tokens: []\n", key: "authentication.tokens", "unknown key")
        // Loopback http is fine, and so is any host with allowInsecure.
        #expect(refusal("authentication:\n  webhook: { endpoint: \"http://localhost:8080/x\" }\n") == nil)
        #expect(refusal("authentication:\n  webhook: { endpoint: \"http://auth.example/x\", allowInsecure: true }\n") == nil)
    }
}
