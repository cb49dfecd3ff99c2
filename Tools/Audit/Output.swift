import Foundation
import SessionLedger

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Bytes for standard output, written in large pieces; `export` of a big ledger prints
/// millions of lines.
struct OutputBuffer {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(1 << 16) }

    mutating func append(_ text: String) { bytes.append(contentsOf: text.utf8) }

    mutating func line(_ text: String) {
        bytes.append(contentsOf: text.utf8)
        bytes.append(UInt8(ascii: "\n"))
    }

    mutating func flushIfLarge() { if bytes.count >= 1 << 16 { flush() } }

    mutating func flush() {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(STDOUT_FILENO, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    // The reader went away (a closed pipe): nothing more can be said.
                    exit(errno == EPIPE ? 0 : 1)
                }
                offset += n
            }
        }
        bytes.removeAll(keepingCapacity: true)
    }
}

/// A JSON object written field by field into a byte buffer, with strings escaped as
/// RFC 8259 requires. Field names are the documented, stable ones.
struct JSONObject {
    private(set) var bytes: [UInt8]
    private var first = true

    init(into bytes: [UInt8] = []) {
        self.bytes = bytes
        self.bytes.append(UInt8(ascii: "{"))
    }

    /// The finished object, and the buffer it was appended to.
    mutating func close() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    private mutating func key(_ name: String) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: name.utf8)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    private mutating func null() { bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C]) }

    mutating func string(_ name: String, _ value: String?) {
        key(name)
        guard var value else { return null() }
        value.withUTF8 { Self.appendQuoted(UnsafeRawBufferPointer($0), to: &bytes) }
    }

    /// A string from stored UTF-8; `nullIfEmpty` for fields that are null when unknown.
    mutating func string(_ name: String, bytes value: ByteKey, nullIfEmpty: Bool = false) {
        key(name)
        if nullIfEmpty && value.count == 0 { return null() }
        Self.appendQuoted(value.buffer, to: &bytes)
    }

    mutating func int<T: BinaryInteger>(_ name: String, _ value: T?) {
        key(name)
        guard let value else { return null() }
        Self.appendDecimal(value, to: &bytes)
    }

    mutating func bool(_ name: String, _ value: Bool) {
        key(name)
        bytes.append(contentsOf: value ? Array("true".utf8) : Array("false".utf8))
    }

    mutating func time(_ name: String, _ micros: Int64?) {
        key(name)
        guard let micros else { return null() }
        bytes.append(UInt8(ascii: "\""))
        AuditTime.append(micros, to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func hex(_ name: String, _ value: UnsafeRawBufferPointer) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        for byte in value {
            bytes.append(Self.hexDigits[Int(byte >> 4)])
            bytes.append(Self.hexDigits[Int(byte & 0xF)])
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A nested object (already closed) as the value of a field.
    mutating func object(_ name: String, _ value: [UInt8]?) {
        key(name)
        guard let value else { return null() }
        bytes.append(contentsOf: value)
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    static func appendDecimal<T: BinaryInteger>(_ value: T, to out: inout [UInt8]) {
        if value == 0 {
            out.append(UInt8(ascii: "0"))
            return
        }
        var magnitude = value.magnitude
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // room for 24 digits, no allocation
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            while magnitude > 0 {
                buffer[count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            }
            for i in stride(from: count - 1, through: 0, by: -1) { out.append(buffer[i]) }
        }
    }

    static func appendQuoted(_ value: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in value {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x00..<0x20, 0x7F:
                out.append(contentsOf: Array("\\u00".utf8))
                out.append(hexDigits[Int(byte >> 4)])
                out.append(hexDigits[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// The event as one JSON object, with the field names documented in the README:
/// `seq`, `time`, `kind`, `reason`, `authenticationName`, `sessionName`, `connection`,
/// `protocolVersion`, `cleanStart`, `sessionExpiryInterval`, `remoteAddress`, `hash`.
func eventJSON(_ r: RawRecord, into buffer: [UInt8] = []) -> [UInt8] {
    var j = JSONObject(into: buffer)
    j.int("seq", r.sequence)
    j.time("time", r.timestamp)
    j.string("kind", ReasonNames.kind(r.kindCode))
    j.string("reason", ReasonNames.reason(kind: r.kindCode, r.reasonCode))
    j.string("authenticationName", bytes: r.authenticationName)
    j.string("sessionName", bytes: r.sessionName)
    j.int("connection", r.connection)
    j.int("protocolVersion", r.protocolCode == 0 ? nil : r.protocolCode)
    j.bool("cleanStart", r.cleanStart)
    j.int("sessionExpiryInterval", r.expiryInterval)
    j.string("remoteAddress", bytes: r.remoteAddress, nullIfEmpty: true)
    j.hex("hash", r.hash)
    return j.close()
}

/// MQTT protocol levels by name, for tables.
func protocolName(_ code: UInt8) -> String {
    switch code {
    case 3: "3.1"
    case 4: "3.1.1"
    case 5: "5.0"
    default: "-"
    }
}

/// Text that cannot break a table row: control characters shown as escapes.
func cell(_ key: ByteKey) -> String {
    key.count == 0 ? "-" : cell(key.string)
}

func cell(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || scalar.value == 0x7F {
            out += "\\u{\(String(scalar.value, radix: 16))}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    return out
}

/// The columns of an event in `history`.
let eventColumns = ["SEQ", "TIME", "KIND", "REASON", "CLIENT", "SESSION", "CONN", "PROTO", "EXPIRY", "REMOTE"]

func eventRow(_ r: RawRecord) -> [String] {
    [
        String(r.sequence), AuditTime.format(r.timestamp), ReasonNames.kind(r.kindCode),
        ReasonNames.reason(kind: r.kindCode, r.reasonCode) ?? "-", cell(r.authenticationName), cell(r.sessionName),
        String(r.connection), protocolName(r.protocolCode), String(r.expiryInterval), cell(r.remoteAddress),
    ]
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
func renderTable(_ header: [String], _ rows: [[String]], into out: inout OutputBuffer) {
    var widths = header.map(\.count)
    for row in rows {
        for (i, value) in row.enumerated() where value.count > widths[i] { widths[i] = value.count }
    }
    func emit(_ row: [String]) {
        var line = ""
        for (i, value) in row.enumerated() {
            line += value
            if i < row.count - 1 { line += String(repeating: " ", count: widths[i] - value.count + 2) }
        }
        out.line(line)
    }
    emit(header)
    for row in rows { emit(row) }
}
