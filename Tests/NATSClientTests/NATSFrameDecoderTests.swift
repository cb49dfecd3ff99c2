import CustodyTesting
import NIOCore
import Testing

@testable import NATSClient

@Suite("NATS frames decoded incrementally")
struct NATSFrameDecoderTests {
    static let headers = "NATS/1.0\r\nK: v\r\nX: y\r\n\r\n"
    static let status = "NATS/1.0 408 Request Timeout\r\n\r\n"
    static let stream: String =
        "INFO {\"server_id\":\"x\",\"connect_urls\":[\"127.0.0.1:4223\"]}\r\n"
        + "MSG a.b 7 5\r\nhello\r\n"
        + "MSG a.c 8 reply.to 0\r\n\r\n"
        + "HMSG h.s 9 r.1 \(headers.utf8.count) \(headers.utf8.count + 5)\r\n\(headers)world\r\n"
        + "HMSG _INBOX.q 3 \(status.utf8.count) \(status.utf8.count)\r\n\(status)\r\n"
        + "PING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n"

    /// Every frame of `bytes`, fed in pieces of the given sizes.
    static func frames(_ bytes: [UInt8], pieces: [Int]) throws -> [NATSFrame] {
        var buffer = ByteBuffer()
        var frames: [NATSFrame] = []
        var offset = 0
        var piece = 0
        while offset < bytes.count {
            let size = min(pieces[piece % pieces.count], bytes.count - offset)
            buffer.writeBytes(bytes[offset..<offset + size])
            offset += size
            piece += 1
            while let frame = try NATSFrameDecoder.decode(&buffer) { frames.append(frame) }
        }
        #expect(buffer.readableBytes == 0)
        return frames
    }

    static func describe(_ frames: [NATSFrame]) -> [String] {
        frames.map { frame in
            switch frame {
            case .info(let bytes): "INFO \(String(buffer: bytes))"
            case .message(let m):
                "MSG \(m.subject) \(m.sid) \(m.replyTo ?? "-") \(m.headers.map { "\($0.status ?? 0) \($0.fields.map { "\($0.name)=\($0.value)" })" } ?? "nil") \(String(buffer: m.payload))"
            case .ping: "PING"
            case .pong: "PONG"
            case .ok: "+OK"
            case .error(let text): "-ERR \(text)"
            }
        }
    }

    @Test func wholeStreamAtOnce() throws {
        let frames = Self.describe(try Self.frames(Array(Self.stream.utf8), pieces: [Self.stream.utf8.count]))
        #expect(frames == [
            "INFO {\"server_id\":\"x\",\"connect_urls\":[\"127.0.0.1:4223\"]}",
            "MSG a.b 7 - nil hello",
            "MSG a.c 8 reply.to nil ",
            "MSG h.s 9 r.1 0 [\"K=v\", \"X=y\"] world",
            "MSG _INBOX.q 3 - 408 [] ",
            "PING", "PONG", "+OK", "-ERR Unknown Protocol Operation",
        ])
    }

    /// A frame cut anywhere (in its control line, its headers, its payload or its CRLF) is kept
    /// whole until the rest comes: the same frames whatever the pieces.
    @Test func partialFramesAreNeverLost() throws {
        let bytes = Array(Self.stream.utf8)
        let whole = Self.describe(try Self.frames(bytes, pieces: [bytes.count]))
        var random = SplitMix(seed: 19)
        for _ in 0..<300 {
            let pieces = (0..<8).map { _ in Int(random.next() % 17) + 1 }
            #expect(Self.describe(try Self.frames(bytes, pieces: pieces)) == whole)
        }
        #expect(Self.describe(try Self.frames(bytes, pieces: [1])) == whole)
    }

    @Test func malformedLinesAreErrors() {
        for bad in ["MSG a.b x 5\r\nhello\r\n", "HMSG a 1 9 3\r\nabc\r\n", "WHAT\r\n"] {
            var buffer = ByteBuffer(string: bad)
            #expect(throws: NATSProtocolError.self) { try NATSFrameDecoder.decode(&buffer) }
        }
    }

    @Test func serverURLs() {
        #expect(NATSServer(url: "nats://127.0.0.1:4222") == NATSServer(host: "127.0.0.1", port: 4222))
        #expect(NATSServer(url: "nats://example.org") == NATSServer(host: "example.org", port: 4222))
        #expect(NATSServer(url: "127.0.0.1:4223") == NATSServer(host: "127.0.0.1", port: 4223))
        #expect(NATSServer(url: "http://127.0.0.1:4222") == nil)
        #expect(NATSServer(url: "nats://h:99999") == nil)
        #expect(NATSServer(url: "nats://") == nil)
    }

    @Test func jetStreamMetadataFromTheReplySubject() throws {
        let v1 = try #require(JetStreamMetadata(replyTo: "$JS.ACK.S.C.2.17.9.1733300000000000000.4"))
        #expect(v1.stream == "S" && v1.consumer == "C" && v1.delivered == 2 && v1.streamSequence == 17
            && v1.consumerSequence == 9 && v1.pending == 4 && v1.timestamp == 1_733_300_000_000_000_000)
        let v2 = try #require(JetStreamMetadata(replyTo: "$JS.ACK.dom.acchash.S.C.1.5.6.1733300000000000000.0.rnd"))
        #expect(v2.stream == "S" && v2.delivered == 1 && v2.streamSequence == 5)
        #expect(JetStreamMetadata(replyTo: "_INBOX.x") == nil)
    }
}
