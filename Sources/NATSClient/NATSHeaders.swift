// NATS message headers (HPUB/HMSG): a status line `NATS/1.0[ code[ description]]`, then
// `Name: value` lines, then an empty line, as HTTP/1 writes them.
import NIOCore

public struct NATSHeaders: Sendable, Equatable {
    /// The status a server puts on its own messages (JetStream's 404 No Messages, 408 Request
    /// Timeout, 409, 503 No Responders, 100 Idle Heartbeat); nil on a client's message.
    public var status: Int?
    public var statusDescription: String
    public var fields: [(name: String, value: String)]

    public init(_ fields: [(name: String, value: String)] = []) {
        self.status = nil
        self.statusDescription = ""
        self.fields = fields
    }

    /// The first value of `name` (compared case-insensitively).
    public subscript(name: String) -> String? {
        let wanted = name.lowercased()
        return fields.first { $0.name.lowercased() == wanted }?.value
    }

    public mutating func add(_ name: String, _ value: String) { fields.append((name, value)) }

    public static func == (lhs: NATSHeaders, rhs: NATSHeaders) -> Bool {
        lhs.status == rhs.status && lhs.statusDescription == rhs.statusDescription
            && lhs.fields.map(\.name) == rhs.fields.map(\.name) && lhs.fields.map(\.value) == rhs.fields.map(\.value)
    }

    init(parsing block: ByteBuffer) throws {
        let text = String(buffer: block)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        guard let first = lines.first, first.hasPrefix("NATS/1.0") else {
            throw NATSProtocolError("headers without a NATS/1.0 status line")
        }
        lines.removeFirst()
        let status = first.dropFirst("NATS/1.0".count).split(separator: " ", maxSplits: 1)
        self.status = status.first.flatMap { Int($0) }
        self.statusDescription = status.count > 1 ? String(status[1]) : ""
        self.fields = []
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { throw NATSProtocolError("header line without ':': \(line)") }
            let value = line[line.index(after: colon)...].drop(while: { $0 == " " })
            fields.append((String(line[..<colon]), String(value)))
        }
    }

    /// The header block as HPUB sends it, ending with the empty line.
    func write(into buffer: inout ByteBuffer) {
        buffer.writeString("NATS/1.0\r\n")
        for field in fields {
            buffer.writeString(field.name)
            buffer.writeString(": ")
            buffer.writeString(field.value)
            buffer.writeString("\r\n")
        }
        buffer.writeString("\r\n")
    }
}
