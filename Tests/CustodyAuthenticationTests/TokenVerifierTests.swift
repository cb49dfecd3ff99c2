import Authorization
import CustodyAuthentication
import CustodyConfig
import CustodyTesting
import Foundation
import LedgerCore
import Testing

// Token checks with keys made by openssl and tokens signed in the test (jwt-kit, from the
// private PEM files): every accepted algorithm, the registered claims, the name claim, the
// algorithms never accepted.

private let issuerURL = "https://login.example/tenant"

private func issuer(_ keys: [String], secret: String? = nil, skew: Int = 60) -> AuthenticationConfiguration.JWTIssuer {
    var issuer = AuthenticationConfiguration.JWTIssuer(issuer: issuerURL, audience: "custody", keys: keys)
    issuer.sharedSecret = secret
    issuer.clockSkewSeconds = skew
    issuer.attributeClaims = ["area": "area", "roles": "roles", "floor": "floor"]
    return issuer
}

private func refusal(_ outcome: TokenOutcome) -> String? {
    if case .refused(let why) = outcome { return why }
    return nil
}

@Suite("Token verification")
struct TokenVerifierTests {
    let keys: TestSigningKeys

    /// openssl makes the keys off the test pool.
    init() async throws { keys = try await offPool { try TestSigningKeys() } }

    @Test(arguments: [
        ("RS256", "rsa", "rsa.pub"), ("RS384", "rsa", "rsa.pub"), ("RS512", "rsa", "rsa.pub"),
        ("RS256", "rsa", "rsa.crt"), ("ES256", "ec256", "ec256.pub"), ("ES384", "ec384", "ec384.pub"),
        ("EdDSA", "ed25519", "ed25519.pub"),
    ])
    func eachAlgorithmIsAccepted(alg: String, key: String, file: String) async throws {
        let verifier = try await TokenVerifier.load([issuer([keys.path(file)])])
        let token = try await keys.token(
            TestClaims(subject: "device-\(alg)", extra: ["area": .string("a1"), "roles": .strings(["r1", "r2"]), "floor": .number(3)]),
            alg: alg, key: key)
        let outcome = await verifier.verify(token)
        guard case .accepted(let name, let attributes, let expiration) = outcome else {
            Issue.record("\(alg) with \(file): \(outcome)")
            return
        }
        #expect(name.value == "device-\(alg)")
        #expect(attributes == ["area": .string("a1"), "roles": .strings(["r1", "r2"]), "floor": .int(3)])
        #expect(expiration != nil)
    }

    @Test func anotherKeyOrAnAlgorithmOfAnotherKeyIsRefused() async throws {
        let verifier = try await TokenVerifier.load([issuer([keys.path("rsa.pub"), keys.path("ec256.pub")])])
        let foreign = try await keys.token(TestClaims(), alg: "RS256", key: "other-rsa")
        #expect(refusal(await verifier.verify(foreign))?.contains("signature not verified") == true)
        // ES384 needs a P-384 key: this issuer has none.
        let es384 = try await keys.token(TestClaims(), alg: "ES384", key: "ec384")
        #expect(refusal(await verifier.verify(es384))?.contains("no key") == true)
        // A tampered payload: the signature no longer holds.
        let good = try await keys.token(TestClaims(subject: "device-1"), alg: "ES256", key: "ec256")
        let forged = try await keys.token(TestClaims(subject: "admin"), alg: "ES256", key: "ec256")
        let (g, f) = (good.split(separator: "."), forged.split(separator: "."))
        let spliced = [g[0], f[1], g[2]].joined(separator: ".")
        #expect(refusal(await verifier.verify(spliced))?.contains("signature") == true)
    }

    /// A token seen before is not parsed again, but its signature is checked every time: its
    /// header and claims with another token's signature are refused, and its times are checked
    /// every time too.
    @Test func aTokenSeenBeforeIsStillCheckedEveryTime() async throws {
        let verifier = try await TokenVerifier.load([issuer([keys.path("ec256.pub")])])
        let good = try await keys.token(TestClaims(subject: "device-1"), alg: "ES256", key: "ec256")
        let other = try await keys.token(TestClaims(subject: "device-2"), alg: "ES256", key: "ec256")
        guard case .accepted(let name, _, _) = verifier.verify(good), name.value == "device-1" else {
            Issue.record("the token was not accepted")
            return
        }
        let (g, o) = (good.split(separator: "."), other.split(separator: "."))
        let wrongSignature = [g[0], g[1], o[2]].joined(separator: ".")
        #expect(refusal(verifier.verify(wrongSignature))?.contains("signature") == true)
        guard case .accepted = verifier.verify(good) else {
            Issue.record("the token was not accepted again")
            return
        }
        #expect(refusal(verifier.verify(good, now: Date().timeIntervalSince1970 + 3600))?.contains("expired") == true)
    }

    @Test func noneAndSharedSecretsAreRefusedUnlessConfigured() async throws {
        let verifier = try await TokenVerifier.load([issuer([keys.path("rsa.pub")])])
        let unsigned = try await keys.token(TestClaims(), alg: "none")
        #expect(refusal(await verifier.verify(unsigned))?.contains("alg none") == true)
        let hs256 = try await keys.token(TestClaims(), alg: "HS256", secret: "a-shared-secret-of-at-least-32-bytes")
        #expect(refusal(await verifier.verify(hs256))?.contains("HS256 is not accepted") == true)
        let withSecret = try await TokenVerifier.load([issuer([keys.path("rsa.pub")], secret: "a-shared-secret-of-at-least-32-bytes")])
        guard case .accepted = await withSecret.verify(hs256) else {
            Issue.record("HS256 with the configured secret was refused")
            return
        }
        let wrongSecret = try await keys.token(TestClaims(), alg: "HS256", secret: "a-guessed-secret-of-at-least-32-bytes")
        #expect(refusal(await withSecret.verify(wrongSecret)) != nil)
    }

    @Test func registeredClaimsAreChecked() async throws {
        let verifier = try await TokenVerifier.load([issuer([keys.path("ec256.pub")], skew: 60)])
        func check(_ claims: TestClaims, _ expected: String) async throws {
            let token = try await keys.token(claims, alg: "ES256", key: "ec256")
            let why = refusal(await verifier.verify(token))
            #expect(why?.contains(expected) == true, "\(why ?? "accepted"), expected \(expected)")
        }
        try await check(TestClaims(expiresIn: -120), "expired")
        try await check(TestClaims(audience: "someone-else"), "audience")
        try await check(TestClaims(issuer: "https://evil.example"), "is not configured")
        try await check(TestClaims(notBeforeIn: 300), "not valid before")
        try await check(TestClaims(issuedAtIn: 300), "in the future")
        try await check(TestClaims(subject: nil), "'sub' is missing")
        try await check(TestClaims(subject: String(repeating: "x", count: 129)), "not a valid authentication name")
        // Within the skew: accepted, and the connection may last until exp + skew.
        let late = try await keys.token(TestClaims(expiresIn: -30), alg: "ES256", key: "ec256")
        guard case .accepted(_, _, let expiration?) = await verifier.verify(late) else {
            Issue.record("a token 30 s past exp with 60 s skew was refused")
            return
        }
        #expect(expiration > Date().timeIntervalSince1970)
        #expect(refusal(await verifier.verify("not.a.token")) != nil)
        #expect(refusal(await verifier.verify("garbage")) != nil)
    }

    @Test func jwksKeysAreChosenByKid() async throws {
        let file = keys.path("jwks.json")
        try keys.writeJWKS(to: file)
        let verifier = try await TokenVerifier.load([issuer([file])])
        let rs = try await keys.token(TestClaims(subject: "by-rsa"), alg: "RS256", key: "rsa", kid: "rsa-1")
        #expect(await verifier.verify(rs) == .accepted(name: AuthenticationName(unchecked: "by-rsa"), attributes: [:],
                                                       expiration: try #require(expiration(await verifier.verify(rs)))))
        let ed = try await keys.token(TestClaims(subject: "by-ed"), alg: "EdDSA", key: "ed25519", kid: "ed-1")
        guard case .accepted(let name, _, _) = await verifier.verify(ed) else {
            Issue.record("EdDSA from the JWKS refused")
            return
        }
        #expect(name.value == "by-ed")
        // The JWKS names RS256 for rsa-1: RS512 with that key is not accepted.
        let rs512 = try await keys.token(TestClaims(), alg: "RS512", key: "rsa", kid: "rsa-1")
        #expect(refusal(await verifier.verify(rs512)) != nil)
    }

    @Test func unusableKeyFilesAreNamed() async throws {
        await #expect(throws: TokenKeyError.self) { try await TokenVerifier.load([issuer([keys.path("rsa.key")])]) }
        let junk = keys.path("junk.json")
        try "{\"keys\": 3}".write(toFile: junk, atomically: true, encoding: .utf8)
        do {
            _ = try await TokenVerifier.load([issuer([junk])])
            Issue.record("a JWKS that is not one was accepted")
        } catch let error as TokenKeyError {
            #expect(error.file == junk)
        }
    }
}

private func expiration(_ outcome: TokenOutcome) -> Double? {
    if case .accepted(_, _, let expiration) = outcome { return expiration }
    return nil
}
