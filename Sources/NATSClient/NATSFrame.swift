// The NATS client protocol's server-to-client frames, decoded incrementally from the bytes of
// one connection (https://docs.nats.io/reference/reference-protocols/nats-protocol).
import NIOCore

/// One message delivered to a subscription (MSG or HMSG).
public struct NATSMessage: Sendable {
    public var subject: String
    /// The subscription it was delivered to.
    public var sid: UInt64
    public var replyTo: String?
    /// HMSG's headers (nil for MSG): their status line's code (JetStream's 404, 408, 409) and
    /// description, and the fields in order.
    public var headers: NATSHeaders?
    public var payload: ByteBuffer

    public init(subject: String, sid: UInt64, replyTo: String?, headers: NATSHeaders?, payload: ByteBuffer) {
        self.subject = subject
        self.sid = sid
        self.replyTo = replyTo
        self.headers = headers
        self.payload = payload
    }
}

/// What the server sends.
public enum NATSFrame: Sendable {
    case info(ByteBuffer)
    case message(NATSMessage)
    case ping
    case pong
    case ok
    case error(String)
}

public struct NATSProtocolError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Shaped for `ByteToMessageHandler`: a frame is consumed only once all of it (control line,
/// payload and its CRLF) is buffered; a partial frame stays in the buffer for the next read.
public struct NATSFrameDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = NATSFrame
    /// The longest control line accepted (subjects are short; INFO carries the server list).
    public static let maximumControlLine = 1 << 20

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.decode(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// The next frame, consuming its bytes; nil (nothing consumed) when it is not all there yet.
    public static func decode(_ buffer: inout ByteBuffer) throws -> NATSFrame? {
        let view = buffer.readableBytesView
        guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count > maximumControlLine { throw NATSProtocolError("control line longer than \(maximumControlLine) bytes") }
            return nil
        }
        let lineLength = newline - view.startIndex
        var line = buffer.getSlice(at: buffer.readerIndex, length: lineLength)!
        if line.readableBytesView.last == UInt8(ascii: "\r") { line.moveWriterIndex(to: line.writerIndex - 1) }
        let lineEnd = lineLength + 1
        let verb = Self.verb(of: line)
        switch verb {
        case "MSG", "HMSG":
            let fields = String(buffer: line).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            let withHeaders = verb == "HMSG"
            // MSG subject sid [reply] size; HMSG subject sid [reply] headerSize totalSize.
            let counts = withHeaders ? 2 : 1
            guard fields.count == 3 + counts || fields.count == 4 + counts, let sid = UInt64(fields[2]),
                let total = Int(fields[fields.count - 1]), total >= 0
            else { throw NATSProtocolError("malformed \(verb) line: \(String(buffer: line))") }
            let headerSize = withHeaders ? Int(fields[fields.count - 2]) ?? -1 : 0
            guard headerSize >= 0, headerSize <= total else { throw NATSProtocolError("malformed \(verb) sizes: \(String(buffer: line))") }
            guard buffer.readableBytes >= lineEnd + total + 2 else { return nil }
            let reply = fields.count == 4 + counts ? fields[3] : nil
            var headers: NATSHeaders?
            if withHeaders {
                let block = buffer.getSlice(at: buffer.readerIndex + lineEnd, length: headerSize)!
                headers = try NATSHeaders(parsing: block)
            }
            let payload = buffer.getSlice(at: buffer.readerIndex + lineEnd + headerSize, length: total - headerSize)!
            buffer.moveReaderIndex(forwardBy: lineEnd + total + 2)
            return .message(NATSMessage(subject: fields[1], sid: sid, replyTo: reply, headers: headers, payload: payload))
        case "INFO":
            buffer.moveReaderIndex(forwardBy: lineEnd)
            line.moveReaderIndex(forwardBy: 4)
            while let byte = line.getInteger(at: line.readerIndex, as: UInt8.self), byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                line.moveReaderIndex(forwardBy: 1)
            }
            return .info(line)
        case "PING":
            buffer.moveReaderIndex(forwardBy: lineEnd)
            return .ping
        case "PONG":
            buffer.moveReaderIndex(forwardBy: lineEnd)
            return .pong
        case "+OK":
            buffer.moveReaderIndex(forwardBy: lineEnd)
            return .ok
        case "-ERR":
            buffer.moveReaderIndex(forwardBy: lineEnd)
            var text = String(buffer: line).dropFirst(4).trimmingCharacters(in: .whitespaces)
            if text.hasPrefix("'"), text.hasSuffix("'"), text.count >= 2 { text = String(text.dropFirst().dropLast()) }
            return .error(text)
        default:
            throw NATSProtocolError("unknown frame from the server: \(String(buffer: line).prefix(80))")
        }
    }

    private static func verb(of line: ByteBuffer) -> String {
        let view = line.readableBytesView
        let end = view.firstIndex(where: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) ?? view.endIndex
        return String(decoding: view[view.startIndex..<end], as: UTF8.self).uppercased()
    }
}

private extension String {
    func trimmingCharacters(in set: Set<Character>) -> String {
        String(drop(while: set.contains).reversed().drop(while: set.contains).reversed())
    }
}

private extension Set where Element == Character {
    static var whitespaces: Set<Character> { [" ", "\t"] }
}
