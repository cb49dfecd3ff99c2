// JSON text and ISO-8601 times written by hand: `custody-audit export`, the lifecycle
// events published over MQTT and the JSON log lines share them, so one event reads the
// same wherever it is printed (and JSONEncoder's cost stays off these paths).

/// A JSON object written field by field into a byte buffer, with strings escaped as
/// RFC 8259 requires. Field names are the documented, stable ones.
public struct JSONObject: Sendable {
    public private(set) var bytes: [UInt8]
    private var first = true

    public init(into bytes: [UInt8] = []) {
        self.bytes = bytes
        self.bytes.append(UInt8(ascii: "{"))
    }

    /// The finished object, and the buffer it was appended to.
    public mutating func close() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    private mutating func key(_ name: String) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        var name = name
        name.withUTF8 { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    private mutating func null() { bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C]) }

    public mutating func string(_ name: String, _ value: String?) {
        key(name)
        guard var value else { return null() }
        value.withUTF8 { Self.appendQuoted(UnsafeRawBufferPointer($0), to: &bytes) }
    }

    /// A string from stored UTF-8; `nullIfEmpty` for fields that are null when unknown.
    public mutating func string(_ name: String, bytes value: UnsafeRawBufferPointer, nullIfEmpty: Bool = false) {
        key(name)
        if nullIfEmpty && value.count == 0 { return null() }
        Self.appendQuoted(value, to: &bytes)
    }

    public mutating func int<T: BinaryInteger>(_ name: String, _ value: T?) {
        key(name)
        guard let value else { return null() }
        Self.appendDecimal(value, to: &bytes)
    }

    /// The common case without generic code (which is not specialized across modules).
    public mutating func int(_ name: String, _ value: Int?) {
        key(name)
        guard let value else { return null() }
        Self.appendDecimal(Int64(value), to: &bytes)
    }

    public mutating func bool(_ name: String, _ value: Bool) {
        key(name)
        bytes.append(contentsOf: value ? Self.trueText : Self.falseText)
    }

    public mutating func time(_ name: String, _ micros: Int64?) {
        key(name)
        guard let micros else { return null() }
        bytes.append(UInt8(ascii: "\""))
        ISO8601Time.append(micros, to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    public mutating func hex(_ name: String, _ value: UnsafeRawBufferPointer) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        for byte in value {
            bytes.append(Self.hexDigits[Int(byte >> 4)])
            bytes.append(Self.hexDigits[Int(byte & 0xF)])
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A nested object (already closed) as the value of a field.
    public mutating func object(_ name: String, _ value: [UInt8]?) {
        key(name)
        guard let value else { return null() }
        bytes.append(contentsOf: value)
    }

    static let hexDigits = Array("0123456789abcdef".utf8)
    static let trueText = Array("true".utf8)
    static let falseText = Array("false".utf8)

    public static func appendDecimal<T: BinaryInteger>(_ value: T, to out: inout [UInt8]) {
        // Generic code called from other modules is not specialized: one conversion, then
        // the concrete writer.
        if let value = Int64(exactly: value) {
            appendDecimal(value, to: &out)
        } else if let value = UInt64(exactly: value) {
            appendDecimal(magnitude: value, negative: false, to: &out)
        } else {
            out.append(contentsOf: Array(String(value).utf8))
        }
    }

    public static func appendDecimal(_ value: Int64, to out: inout [UInt8]) {
        appendDecimal(magnitude: value.magnitude, negative: value < 0, to: &out)
    }

    /// The digits written backwards into a stack buffer, then appended at once.
    private static func appendDecimal(magnitude: UInt64, negative: Bool, to out: inout [UInt8]) {
        if negative { out.append(UInt8(ascii: "-")) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // room for 24 digits, no allocation
        withUnsafeMutableBytes(of: &digits) { buffer in
            var rest = magnitude
            var start = buffer.count
            repeat {
                start -= 1
                buffer[start] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            } while rest > 0
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[start...]))
        }
    }

    public static func appendQuoted(_ value: String, to out: inout [UInt8]) {
        var value = value
        value.withUTF8 { appendQuoted(UnsafeRawBufferPointer($0), to: &out) }
    }

    /// `value` between quotes, escaped: runs that need no escape (most text) are appended
    /// whole, not byte by byte.
    public static func appendQuoted(_ value: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var runStart = 0
        for index in 0..<value.count {
            let byte = value[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte == 0x7F else { continue }
            if runStart < index { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: value[runStart..<index])) }
            appendEscaped(byte, to: &out)
            runStart = index + 1
        }
        if runStart < value.count { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: value[runStart...])) }
        out.append(UInt8(ascii: "\""))
    }

    private static func appendEscaped(_ byte: UInt8, to out: inout [UInt8]) {
        switch byte {
        case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
        case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
        case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
        case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
        case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
        case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
        default:
            out.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 0xF)])
        }
    }
}

/// ISO-8601 UTC times to and from the ledger's microseconds since the Unix epoch.
/// Hand-written: `custody-audit export` prints one per event, and Foundation's formatters
/// cost more than the rest of an exported line together. Shared by the audit tool, the
/// lifecycle events and the JSON log lines, so that all print times alike.
public enum ISO8601Time {
    public static let microsecondsPerSecond: Int64 = 1_000_000
    public static let secondsPerDay: Int64 = 86_400

    /// `2026-11-25T09:00:00.123456Z`: always six fractional digits.
    public static func format(_ micros: Int64) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(27)
        append(micros, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Written into a stack buffer and appended at once; a year outside 0-9999 is appended
    /// as it is, ahead of the buffer's rest.
    public static func append(_ micros: Int64, to out: inout [UInt8]) {
        let (seconds, fraction) = floorDivide(micros, microsecondsPerSecond)
        let (days, secondOfDay) = floorDivide(seconds, secondsPerDay)
        let (year, month, day) = civil(fromDays: days)
        var text: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)  // 32 bytes, no allocation
        withUnsafeMutableBytes(of: &text) { buffer in
            func digits(_ value: Int64, _ width: Int, at offset: Int) {
                var rest = value
                for index in stride(from: offset + width - 1, through: offset, by: -1) {
                    buffer[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                    rest /= 10
                }
            }
            let fourDigitYear = (0...9999).contains(year)
            if fourDigitYear { digits(year, 4, at: 0) } else { out.append(contentsOf: Array(String(year).utf8)) }
            buffer[4] = UInt8(ascii: "-")
            digits(month, 2, at: 5)
            buffer[7] = UInt8(ascii: "-")
            digits(day, 2, at: 8)
            buffer[10] = UInt8(ascii: "T")
            digits(secondOfDay / 3600, 2, at: 11)
            buffer[13] = UInt8(ascii: ":")
            digits(secondOfDay / 60 % 60, 2, at: 14)
            buffer[16] = UInt8(ascii: ":")
            digits(secondOfDay % 60, 2, at: 17)
            buffer[19] = UInt8(ascii: ".")
            digits(fraction, 6, at: 20)
            buffer[26] = UInt8(ascii: "Z")
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[(fourDigitYear ? 0 : 4)..<27]))
        }
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`; a fraction of up to nine digits
    /// is accepted and cut to microseconds. Nil when the text is not such a time.
    public static func parse(_ text: String) -> Int64? {
        let s = Array(text.utf8)
        var i = 0
        func number(_ width: Int) -> Int64? {
            guard i + width <= s.count else { return nil }
            var value: Int64 = 0
            for k in i..<i + width {
                guard s[k] >= UInt8(ascii: "0"), s[k] <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int64(s[k] - UInt8(ascii: "0"))
            }
            i += width
            return value
        }
        func expect(_ chars: String) -> Bool {
            guard i < s.count, chars.utf8.contains(s[i]) else { return false }
            i += 1
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2),
              expect("Tt"), let hour = number(2), expect(":"), let minute = number(2), expect(":"),
              let second = number(2)
        else { return nil }
        var fraction: Int64 = 0
        if i < s.count, s[i] == UInt8(ascii: ".") {
            i += 1
            var digits = 0
            while i < s.count, s[i] >= UInt8(ascii: "0"), s[i] <= UInt8(ascii: "9") {
                if digits < 6 { fraction = fraction * 10 + Int64(s[i] - UInt8(ascii: "0")) }
                digits += 1
                i += 1
            }
            guard (1...9).contains(digits) else { return nil }
            if digits < 6 { for _ in digits..<6 { fraction *= 10 } }
        }
        let rest = String(decoding: s[i...], as: UTF8.self)
        guard rest == "Z" || rest == "z" || rest == "+00:00" else { return nil }
        guard (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day),
              (0...23).contains(hour), (0...59).contains(minute), (0...59).contains(second)
        else { return nil }
        let days = days(fromCivil: year, month, day)
        return ((days * secondsPerDay + hour * 3600 + minute * 60 + second) * microsecondsPerSecond) + fraction
    }

    private static func floorDivide(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
        let q = a / b
        let r = a % b
        return r < 0 ? (q - 1, r + b) : (q, r)
    }

    private static func isLeap(_ year: Int64) -> Bool { year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) }

    private static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }

    // Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
    private static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (month <= 2 ? yoe + era * 400 + 1 : yoe + era * 400, month, day)
    }
}
