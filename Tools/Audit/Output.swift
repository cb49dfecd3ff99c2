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

extension JSONObject {
    /// A string from the stored UTF-8 of a record; `nullIfEmpty` for fields that are null when unknown.
    mutating func string(_ name: String, bytes value: ByteKey, nullIfEmpty: Bool = false) {
        string(name, bytes: value.buffer, nullIfEmpty: nullIfEmpty)
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

/// A checkpoint record as one JSON object: what it states of the projection before it.
func checkpointJSON(_ r: RawRecord, into buffer: [UInt8] = []) -> [UInt8] {
    var j = JSONObject(into: buffer)
    j.int("seq", r.sequence)
    j.time("time", r.timestamp)
    j.string("kind", "checkpoint")
    if let checkpoint = r.checkpoint {
        j.int("liveSessions", checkpoint.liveSessions)
        j.int("disconnectedSessions", checkpoint.disconnectedSessions)
        j.int("clients", checkpoint.clients)
        j.int("highestConnection", checkpoint.highestConnection)
        j.int("previousCheckpoint", checkpoint.previousCheckpoint)
        checkpoint.digest.withBytes { j.hex("projectionDigest", $0) }
    }
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
        String(r.sequence), ISO8601Time.format(r.timestamp), ReasonNames.kind(r.kindCode),
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
