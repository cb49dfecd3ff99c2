import Foundation
import Yams

// The `authentication:` section of the configuration file: token issuers (`jwt:`) and the
// webhook. Values may name environment variables (`${env:NAME}`), resolved here, so that a
// secret need not sit in the file; a variable that is not set stops start-up naming it.

extension ConfigurationReader {
    func authentication(_ node: Node) throws(ConfigurationError) -> AuthenticationConfiguration {
        let keys = try mapping(node, "authentication", known: ["jwt", "webhook"])
        var result = AuthenticationConfiguration()
        if let (_, value) = keys["jwt"] {
            let items = try sequence(value, "authentication.jwt")
            guard !items.isEmpty else { throw fail(value, "authentication.jwt", "at least one issuer is needed") }
            for (index, item) in items.enumerated() {
                result.jwt.append(try issuer(item, "authentication.jwt[\(index)]"))
            }
        }
        if let (_, value) = keys["webhook"] { result.webhook = try webhook(value, "authentication.webhook") }
        return result
    }

    private func issuer(_ node: Node, _ at: String) throws(ConfigurationError) -> AuthenticationConfiguration.JWTIssuer {
        let keys = try mapping(node, at, known: [
            "issuer", "audience", "keys", "authenticationNameClaim", "attributeClaims", "clockSkewSeconds", "sharedSecret",
        ])
        guard let (_, issuerNode) = keys["issuer"] else { throw fail(node, "\(at).issuer", "missing (the iss a token must carry)") }
        guard let (_, audienceNode) = keys["audience"] else { throw fail(node, "\(at).audience", "missing (the aud a token must hold)") }
        var issuer = AuthenticationConfiguration.JWTIssuer(
            issuer: try nonEmptyString(issuerNode, "\(at).issuer"), audience: try nonEmptyString(audienceNode, "\(at).audience"))
        if let (_, value) = keys["keys"] {
            for (index, item) in try sequence(value, "\(at).keys").enumerated() {
                let file = try path(item, "\(at).keys[\(index)]")
                guard FileManager.default.isReadableFile(atPath: file) else {
                    throw fail(item, "\(at).keys[\(index)]", "cannot read \(file)")
                }
                issuer.keys.append(file)
            }
        }
        if let (_, value) = keys["sharedSecret"] {
            let secret = try expanded(try nonEmptyString(value, "\(at).sharedSecret"), value, "\(at).sharedSecret")
            guard secret.utf8.count >= 32 else {
                throw fail(value, "\(at).sharedSecret", "at least 32 bytes (HS256; 48 for HS384, 64 for HS512)")
            }
            issuer.sharedSecret = secret
        }
        if issuer.keys.isEmpty && issuer.sharedSecret == nil {
            throw fail(node, "\(at).keys", "an issuer needs keys (JWKS or PEM files) or a sharedSecret")
        }
        if let (_, value) = keys["authenticationNameClaim"] {
            issuer.authenticationNameClaim = try nonEmptyString(value, "\(at).authenticationNameClaim")
        }
        if let (_, value) = keys["attributeClaims"] {
            guard let mapping = value.mapping else {
                throw fail(value, "\(at).attributeClaims", "expected a mapping of claims to attribute names")
            }
            for (key, item) in mapping {
                guard let claim = key.scalar?.string, !claim.isEmpty else {
                    throw fail(key, "\(at).attributeClaims", "claim names must be plain strings")
                }
                issuer.attributeClaims[claim] = try nonEmptyString(item, "\(at).attributeClaims.\(claim)")
            }
        }
        if let (_, value) = keys["clockSkewSeconds"] {
            issuer.clockSkewSeconds = try int(
                value, "\(at).clockSkewSeconds", range: AuthenticationConfiguration.JWTIssuer.clockSkewRange)
        }
        return issuer
    }

    private func webhook(_ node: Node, _ at: String) throws(ConfigurationError) -> AuthenticationConfiguration.Webhook {
        let keys = try mapping(node, at, known: ["endpoint", "timeoutMilliseconds", "cacheSeconds", "headers", "allowInsecure"])
        guard let (_, endpointNode) = keys["endpoint"] else { throw fail(node, "\(at).endpoint", "missing (https://...)") }
        let endpoint = try nonEmptyString(endpointNode, "\(at).endpoint")
        var webhook = AuthenticationConfiguration.Webhook(endpoint: endpoint)
        if let (_, value) = keys["allowInsecure"] { webhook.allowInsecure = try bool(value, "\(at).allowInsecure") }
        guard let url = URL(string: endpoint), let scheme = url.scheme?.lowercased(), let host = url.host, !host.isEmpty,
            scheme == "https" || scheme == "http"
        else {
            throw fail(endpointNode, "\(at).endpoint", "'\(endpoint)' is not an http(s) URL")
        }
        if scheme == "http" && !webhook.allowInsecure && !Self.isLoopback(host) {
            throw fail(endpointNode, "\(at).endpoint",
                       "http:// only to a loopback host (127.0.0.1, ::1, localhost) unless allowInsecure is true")
        }
        if let (_, value) = keys["timeoutMilliseconds"] {
            webhook.timeoutMilliseconds = try int(
                value, "\(at).timeoutMilliseconds", range: AuthenticationConfiguration.Webhook.timeoutRange)
        }
        if let (_, value) = keys["cacheSeconds"] {
            webhook.cacheSeconds = try int(value, "\(at).cacheSeconds", range: AuthenticationConfiguration.Webhook.cacheRange)
        }
        if let (_, value) = keys["headers"] {
            guard let mapping = value.mapping else { throw fail(value, "\(at).headers", "expected a mapping of names to values") }
            for (key, item) in mapping {
                guard let name = key.scalar?.string, !name.isEmpty else {
                    throw fail(key, "\(at).headers", "header names must be plain strings")
                }
                let text = try string(item, "\(at).headers.\(name)")
                webhook.headers[name] = try expanded(text, item, "\(at).headers.\(name)")
            }
        }
        return webhook
    }

    static func isLoopback(_ host: String) -> Bool {
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased()
        return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.")
    }

    /// `text` with each `${env:NAME}` replaced by that environment variable.
    func expanded(_ text: String, _ node: Node, _ key: String) throws(ConfigurationError) -> String {
        var result = ""
        var rest = Substring(text)
        while let start = rest.range(of: "${env:") {
            result += rest[..<start.lowerBound]
            guard let end = rest[start.upperBound...].firstIndex(of: "}") else {
                throw fail(node, key, "'${env:' without its closing '}'")
            }
            let name = String(rest[start.upperBound..<end])
            guard let value = ProcessInfo.processInfo.environment[name] else {
                throw fail(node, key, "the environment variable \(name) is not set")
            }
            result += value
            rest = rest[rest.index(after: end)...]
        }
        return result + rest
    }
}
