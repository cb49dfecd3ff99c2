import Histogram
import MQTTCodec

/// Successes with their latencies, and failures by reason. Failures are never successes.
struct LatencyStats {
    /// Microseconds, 1 us to 10 min, three significant digits.
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
    var ok = 0
    var errors: [String: Int] = [:]

    var errorCount: Int { errors.values.reduce(0, +) }
    var cycles: Int { ok + errorCount }

    mutating func success(nanoseconds: UInt64) {
        ok += 1
        _ = histogram.record(min(max(nanoseconds / 1000, 1), 600_000_000))
    }

    mutating func error(_ reason: String) {
        errors[reason, default: 0] += 1
    }

    func percentile(_ p: Double) -> UInt64 { histogram.totalCount == 0 ? 0 : histogram.valueAtPercentile(p) }
}

/// The error key for a CONNACK that refused: its code as the connection's version writes it.
func connAckErrorKey(_ code: MQTTReasonCode, _ version: MQTTProtocolVersion) -> String {
    if version == .mqtt5 { return "connack_0x" + hex(code.rawValue) }
    return "connack_rc\(MQTTConnectReturnCode(code).rawValue)"
}

func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
}

/// One field of a summary: how it reads in the line and in JSON.
struct Field {
    let key: String
    let text: String
    let json: String

    static func int(_ key: String, _ value: Int) -> Field { Field(key: key, text: String(value), json: String(value)) }
    static func rate(_ key: String, _ value: Double) -> Field {
        Field(key: key, text: fixed(value, 1) + "/s", json: fixed(value, 1))
    }
    static func micros(_ key: String, _ value: UInt64) -> Field {
        Field(key: key, text: String(value) + "us", json: String(value))
    }
    static func number(_ key: String, _ value: Double, digits: Int = 1) -> Field {
        Field(key: key, text: fixed(value, digits), json: fixed(value, digits))
    }
    static func string(_ key: String, _ value: String) -> Field {
        Field(key: key, text: value, json: jsonString(value))
    }
}

func jsonString(_ value: String) -> String {
    var out = "\""
    for scalar in value.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default:
            if scalar.value < 0x20 { out += "\\u00" + hex(UInt8(scalar.value)) } else { out.unicodeScalars.append(scalar) }
        }
    }
    return out + "\""
}

/// What one mode measured: the summary fields (the final line), details printed before it,
/// errors by reason, and the figures `compare` sets side by side.
struct Report: Sendable {
    var mode: String
    var fields: [Field] = []
    var details: [Field] = []
    var errors: [String: Int] = [:]
    /// The headline rate (successes per second), the headline p99 (us) and CPU per cycle.
    var rate: Double = 0
    var p99: UInt64 = 0
    var brokerCPUPerCycle: Double?
    /// connect's raw figures, for merging the passes of several generator threads.
    var connectPart: ConnectPart?

    var summaryLine: String {
        "\(mode): " + fields.map { "\($0.key)=\($0.text)" }.joined(separator: " ")
    }

    var detailLine: String {
        "\(mode): detail " + details.map { "\($0.key)=\($0.text)" }.joined(separator: " ")
    }

    var errorLine: String? {
        guard !errors.isEmpty else { return nil }
        return "\(mode): errors_by_reason " + errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    }

    var json: String {
        var parts = ["\"mode\":" + jsonString(mode)]
        parts += fields.map { jsonString($0.key) + ":" + $0.json }
        parts.append("\"errors_by_reason\":{" + errors.sorted { $0.key < $1.key }.map { jsonString($0.key) + ":" + String($0.value) }.joined(separator: ",") + "}")
        parts.append("\"detail\":{" + details.map { jsonString($0.key) + ":" + $0.json }.joined(separator: ",") + "}")
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// The details, the errors and, last, the summary line; or one JSON object.
    func print(json asJSON: Bool) {
        if asJSON {
            Swift.print(json)
        } else {
            Swift.print(detailLine)
            if let errorLine { Swift.print(errorLine) }
            Swift.print(summaryLine)
        }
    }
}

extension Field: Sendable {}

/// The common tail of every summary: percentiles, and broker CPU per cycle if measured.
func latencyFields(_ stats: LatencyStats, prefix: String = "") -> [Field] {
    [
        .micros(prefix + "p50", stats.percentile(50)),
        .micros(prefix + "p99", stats.percentile(99)),
        .micros(prefix + "p999", stats.percentile(99.9)),
    ]
}
