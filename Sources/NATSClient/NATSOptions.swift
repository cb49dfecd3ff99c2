// Where and how a NATSConnection connects.
import Foundation

/// One server's address, `nats://host:port` (port 4222 when absent).
public struct NATSServer: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `nats://host[:port]` or `host:port` (as INFO's connect_urls are); nil when it is neither.
    public init?(url: String) {
        var text = Substring(url)
        if text.hasPrefix("nats://") { text = text.dropFirst("nats://".count) } else if text.contains("://") { return nil }
        if text.hasSuffix("/") { text = text.dropLast() }
        var host = text
        var port = 4222
        if let colon = text.lastIndex(of: ":"), !text.hasSuffix("]") {
            guard let parsed = Int(text[text.index(after: colon)...]), (1...65535).contains(parsed) else { return nil }
            port = parsed
            host = text[..<colon]
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("/"), !host.contains("@"), !host.contains(" ") else { return nil }
        self.host = String(host)
        self.port = port
    }

    public var description: String { "nats://\(host.contains(":") ? "[\(host)]" : host):\(port)" }
}

public struct NATSOptions: Sendable {
    /// Tried in order; servers that INFO's connect_urls name are added after them.
    public var servers: [NATSServer]
    /// The connection's name as the server shows it (`/connz`).
    public var name: String
    /// The server does not deliver this connection's own publishes to its own subscriptions.
    public var noEcho: Bool
    /// How long a request waits for its reply.
    public var requestTimeout: TimeAmount
    /// Between rounds of reconnect attempts over every known server.
    public var reconnectWait: TimeAmount
    /// How long one connect attempt (TCP, INFO, CONNECT, PONG) may take.
    public var connectTimeout: TimeAmount
    /// What publishes may buffer while no server is connected; past it, `publish` throws.
    public var pendingLimit: Int

    public init(
        servers: [NATSServer], name: String = "custody", noEcho: Bool = false,
        requestTimeout: TimeAmount = .seconds(5), reconnectWait: TimeAmount = .milliseconds(200),
        connectTimeout: TimeAmount = .seconds(2), pendingLimit: Int = 64 << 20
    ) {
        self.servers = servers
        self.name = name
        self.noEcho = noEcho
        self.requestTimeout = requestTimeout
        self.reconnectWait = reconnectWait
        self.connectTimeout = connectTimeout
        self.pendingLimit = pendingLimit
    }
}

import NIOCore

public enum NATSError: Error, CustomStringConvertible, Sendable {
    /// No server of the list could be connected to.
    case noServer(String)
    /// The connection was closed by its owner.
    case closed
    /// No reply within the request timeout.
    case timeout(subject: String)
    /// Nobody listens on the subject (status 503).
    case noResponders(subject: String)
    /// `-ERR` from the server.
    case server(String)
    /// Disconnected with more buffered than `pendingLimit`.
    case pendingLimit
    /// The connection to the server was lost before the answer came.
    case connectionLost

    public var description: String {
        switch self {
        case .noServer(let why): "no NATS server reachable: \(why)"
        case .closed: "the NATS connection is closed"
        case .timeout(let subject): "no reply on NATS within the timeout (\(subject))"
        case .noResponders(let subject): "no responders on NATS subject \(subject)"
        case .server(let message): "NATS server error: \(message)"
        case .pendingLimit: "NATS disconnected and its pending buffer is full"
        case .connectionLost: "the connection to the NATS server was lost"
        }
    }
}

/// INFO's fields the client uses.
public struct NATSServerInfo: Sendable, Decodable {
    public var serverID: String?
    public var serverName: String?
    public var version: String?
    public var maxPayload: Int?
    public var headers: Bool?
    public var jetstream: Bool?
    public var connectURLs: [String]?

    enum CodingKeys: String, CodingKey {
        case serverID = "server_id", serverName = "server_name", version, maxPayload = "max_payload", headers, jetstream
        case connectURLs = "connect_urls"
    }
}
