import AsyncHTTPClient
import CustodyConfig
import Foundation
import LMDBStorage
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// One route's requests (CloudEvents' HTTP binding) and what their answers mean.
struct RouteDelivery: Sendable {
    let route: RouteConfiguration

    /// How one attempt ended.
    enum Outcome: Sendable, Equatable {
        /// 2xx.
        case delivered
        /// 408, 429, 5xx, or no answer (`status` nil): tried again, after `retryAfter`
        /// seconds when the endpoint said so.
        case retry(status: Int?, error: String, retryAfter: Double?)
        /// Any other answer: dead-lettered at once.
        case rejected(status: Int, error: String)
    }

    /// The request for `events` (one, or up to `maxBatchEvents` in batch mode).
    func request(_ events: [OutboxRecord]) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: route.endpoint.absoluteString)
        request.method = .POST
        for (name, value) in route.headers { request.headers.add(name: name, value: value) }
        switch route.mode {
        case .structured:
            request.headers.replaceOrAdd(name: "Content-Type", value: CloudEvents.structuredContentType + "; charset=utf-8")
            request.body = .bytes(ByteBuffer(bytes: events[0].event))
        case .batch:
            var body = ByteBuffer()
            body.reserveCapacity(events.reduce(2) { $0 + $1.event.count + 1 })
            body.writeInteger(UInt8(ascii: "["))
            for (index, record) in events.enumerated() {
                if index > 0 { body.writeInteger(UInt8(ascii: ",")) }
                body.writeBytes(record.event)
            }
            body.writeInteger(UInt8(ascii: "]"))
            request.headers.replaceOrAdd(name: "Content-Type", value: CloudEvents.batchContentType + "; charset=utf-8")
            request.body = .bytes(body)
        case .binary:
            let (headers, body) = Self.binary(events[0].event)
            for (name, value) in headers { request.headers.replaceOrAdd(name: name, value: value) }
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        return request
    }

    /// Binary mode: every attribute a `ce-` header (`datacontenttype` the Content-Type), the
    /// data the body (JSON as JSON text, `data_base64` decoded).
    static func binary(_ event: [UInt8]) -> (headers: [(String, String)], body: [UInt8]) {
        guard let object = try? JSONDecoder().decode([String: JSONValue].self, from: Data(event)) else {
            return ([("Content-Type", CloudEvents.structuredContentType)], event)
        }
        var headers: [(String, String)] = []
        var body: [UInt8] = []
        for (name, value) in object.sorted(by: { $0.key < $1.key }) {
            switch (name, value) {
            case ("data", _):
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.withoutEscapingSlashes]
                body = (try? encoder.encode(value)).map { Array($0) } ?? []
            case ("data_base64", .string(let text)):
                body = Data(base64Encoded: text).map { Array($0) } ?? []
            case ("datacontenttype", .string(let text)):
                headers.append(("Content-Type", text))
            default:
                headers.append(("ce-" + name, percentEncoded(value.text)))
            }
        }
        return (headers, body)
    }

    /// CloudEvents' HTTP binding: header values outside printable ASCII, and `%` and `"`,
    /// are percent-encoded (UTF-8).
    static func percentEncoded(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 < 0x20 || $0 > 0x7E || $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "\"") }) else {
            return text
        }
        var out = ""
        for byte in text.utf8 {
            if byte < 0x20 || byte > 0x7E || byte == UInt8(ascii: "%") || byte == UInt8(ascii: "\"") {
                out += String(format: "%%%02X", byte)
            } else {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return out
    }

    /// Sends one request and reads the answer.
    func attempt(_ events: [OutboxRecord], client: HTTPClient) async -> Outcome {
        do {
            let response = try await client.execute(request(events), timeout: .seconds(Int64(route.timeoutSeconds)))
            let status = Int(response.status.code)
            // Read (and drop) the answer, so that the connection can be kept.
            let body = try? await response.body.collect(upTo: 4096)
            let said = body.map { String(buffer: $0) }.map { $0.count > 200 ? String($0.prefix(200)) + "..." : $0 } ?? ""
            switch status {
            case 200..<300:
                return .delivered
            case 408, 429, 500..<600:
                let retryAfter = response.headers.first(name: "Retry-After").flatMap(Self.retryAfter)
                return .retry(status: status, error: "HTTP \(status) \(said)", retryAfter: retryAfter)
            default:
                return .rejected(status: status, error: "HTTP \(status) \(said)")
            }
        } catch {
            return .retry(status: nil, error: "\(error)", retryAfter: nil)
        }
    }

    /// `Retry-After` in seconds, or an HTTP date; at most a day.
    static func retryAfter(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let seconds = Double(trimmed), seconds >= 0 { return min(seconds, 86_400) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: trimmed) else { return nil }
        return min(max(0, date.timeIntervalSinceNow), 86_400)
    }

    /// Exponential backoff with jitter after `attempts` failed attempts: 0.1 s doubling up to
    /// 60 s, each wait between half and all of it.
    static func backoff(attempts: Int) -> Double {
        let ceiling = min(60, 0.1 * pow(2, Double(min(attempts - 1, 20))))
        return Double.random(in: (ceiling / 2)...ceiling)
    }
}

/// Any JSON value, read back from a stored event (binary mode).
indirect enum JSONValue: Codable, Sendable {
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
    case null

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .int(value)
        } else if let value = try? container.decode(Double.self) {
            self = .double(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }

    /// As a header value: strings as they are, the rest as JSON text.
    var text: String {
        switch self {
        case .string(let value): return value
        case .bool(let value): return value ? "true" : "false"
        case .int(let value): return "\(value)"
        default:
            return (try? JSONEncoder().encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        }
    }
}
