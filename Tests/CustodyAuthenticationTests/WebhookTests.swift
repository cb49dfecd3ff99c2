import Authorization
import CustodyAuthentication
import CustodyConfig
import CustodyModel
import CustodyTesting
import Foundation
import LedgerCore
import Logging
import Testing

// The webhook against a real HTTP server on 127.0.0.1 (TestWebhookServer: Python's
// http.server) answering allow, deny, slowly, 500 and garbage.

private func credentials(_ user: String?, password: String? = nil, session: String = "s-1") -> ConnectCredentials {
    ConnectCredentials(
        username: user, password: password.map { Array($0.utf8) }, sessionName: session, certificate: nil,
        authenticationMethod: "CUSTOM", authenticationData: [1, 2, 3], remoteAddress: "127.0.0.1:5555",
        listener: "127.0.0.1:1883")
}

@Suite("Authentication webhook", .serialized)
struct WebhookTests {
    let server: TestWebhookServer

    init() async throws { server = try await offPool { try TestWebhookServer() } }

    func webhook(cache: Int = 0, timeout: Int = 1000) -> WebhookAuthenticator {
        var settings = AuthenticationConfiguration.Webhook(endpoint: server.endpoint)
        settings.cacheSeconds = cache
        settings.timeoutMilliseconds = timeout
        settings.headers = ["Authorization": "Bearer test-token"]
        return WebhookAuthenticator(settings, logger: Logger(label: "test"))
    }

    @Test func allowGivesTheNameAndAttributes() async throws {
        let outcome = await webhook().ask(credentials("machine-7", password: "area1"))
        #expect(outcome == .allow(name: AuthenticationName(unchecked: "machine-7"), attributes: ["area": .string("area1")], expiration: nil))
        let request = try server.lastRequest()
        #expect(request["clientId"] as? String == "s-1")
        #expect(request["userName"] as? String == "machine-7")
        #expect(request["password"] as? String == Data("area1".utf8).base64EncodedString())
        #expect(request["authenticationMethod"] as? String == "CUSTOM")
        #expect(request["authenticationData"] as? String == Data([1, 2, 3]).base64EncodedString())
        #expect(request["listener"] as? String == "127.0.0.1:1883")
        #expect(request["remoteAddress"] as? String == "127.0.0.1:5555")
        #expect(try server.lastHeaders().contains("Authorization: Bearer test-token"))
    }

    @Test func expirationIsTaken() async throws {
        guard case .allow(_, _, let expiration?) = await webhook().ask(credentials("short-1")) else {
            Issue.record("no expiration")
            return
        }
        #expect(abs(expiration - Date().timeIntervalSince1970 - 2) < 2)
    }

    @Test func denyFailureAndTimeout() async throws {
        let hook = webhook(timeout: 1000)
        #expect(await hook.ask(credentials("deny-1")) == .deny(reason: "denied by the test server"))
        guard case .failed(let status) = await hook.ask(credentials("fail-1")) else { Issue.record("500 allowed"); return }
        #expect(status.contains("500"))
        guard case .failed(let garbage) = await hook.ask(credentials("garbage-1")) else { Issue.record("garbage allowed"); return }
        #expect(garbage.contains("not the JSON"))
        let start = Date()
        guard case .failed = await hook.ask(credentials("slow-1")) else { Issue.record("slow allowed"); return }
        // Bounded by the timeout (1 s), not the server's 3 s.
        #expect(Date().timeIntervalSince(start) < 2.8)
    }

    @Test func answersAreCachedByCredentials() async throws {
        let cached = webhook(cache: 60)
        let server = self.server
        func count() async throws -> Int { try await offPool { try server.count() } }
        let before = try await count()
        for _ in 0..<3 { _ = await cached.ask(credentials("machine-8", password: "p")) }
        #expect(try await count() == before + 1)
        // Other credentials (another password) are asked again.
        _ = await cached.ask(credentials("machine-8", password: "q"))
        #expect(try await count() == before + 2)
        // Failures are not kept.
        _ = await cached.ask(credentials("fail-2"))
        _ = await cached.ask(credentials("fail-2"))
        #expect(try await count() == before + 4)
        let uncached = webhook(cache: 0)
        for _ in 0..<2 { _ = await uncached.ask(credentials("machine-9")) }
        #expect(try await count() == before + 6)
    }
}
