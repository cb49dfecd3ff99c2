/// A host and a port, as in `127.0.0.1:1883` or `[::1]:1883`: what every listener, flag
/// and configuration key that names an address takes. Port 0: any free port.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, `[IPv6]:PORT`, or `HOST` alone when a default port is given.
    public init?(parsing text: String, defaultPort: Int? = nil) {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { return nil }
                portText = rest.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            // An IPv6 address without brackets has several colons: not acceptable, say so.
            if host.contains(":") { return nil }
        } else {
            host = Substring(text)
        }
        guard !host.isEmpty, !host.contains(where: { $0.isWhitespace || $0 == "/" }) else { return nil }
        let port: Int
        if let portText {
            guard let parsed = Int(portText), (0...65_535).contains(parsed) else { return nil }
            port = parsed
        } else {
            guard let defaultPort else { return nil }
            port = defaultPort
        }
        self.init(host: String(host), port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Loopback hosts: a metrics endpoint elsewhere must be asked for explicitly.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}
