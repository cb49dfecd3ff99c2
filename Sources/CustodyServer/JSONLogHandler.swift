import LedgerCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One JSON object per line on standard error (`--log-format json`), for log shippers:
///
///     {"time":"2026-11-25T11:00:09.123456Z","level":"info","label":"custody.mqtt",
///      "message":"connect granted","metadata":{"session_name":"s1","connection":"7"}}
///
/// (one line in reality). Metadata values are strings (arrays and dictionaries nest);
/// `metadata` is `{}` when there is none. Same sink as `LineLogHandler`: one `write(2)` per
/// line under a lock, so lines never interleave.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let sink: LineSink

    public init(label: String, level: Logger.Level, fileDescriptor: Int32 = 2) {
        self.label = label
        self.logLevel = level
        self.sink = LineSink(fileDescriptor: fileDescriptor)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line: [UInt8] = []
        line.reserveCapacity(256)
        line.append(contentsOf: #"{"time":""#.utf8)
        ISO8601Time.append(currentMicroseconds(), to: &line)
        line.append(contentsOf: #"","level":"#.utf8)
        JSONObject.appendQuoted(event.level.rawValue, to: &line)
        line.append(contentsOf: #","label":"#.utf8)
        JSONObject.appendQuoted(label, to: &line)
        line.append(contentsOf: #","message":"#.utf8)
        JSONObject.appendQuoted(event.message.description, to: &line)
        line.append(contentsOf: #","metadata":"#.utf8)
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { $1 } }
        if let extra = event.metadata { all.merge(extra) { $1 } }
        Self.append(.dictionary(all), to: &line)
        line.append(UInt8(ascii: "}"))
        line.append(0x0A)
        sink.write(line)
    }

    private static func append(_ value: Logger.Metadata.Value, to line: inout [UInt8]) {
        switch value {
        case .string(let text):
            JSONObject.appendQuoted(text, to: &line)
        case .stringConvertible(let convertible):
            JSONObject.appendQuoted(convertible.description, to: &line)
        case .array(let items):
            line.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { line.append(UInt8(ascii: ",")) }
                append(item, to: &line)
            }
            line.append(UInt8(ascii: "]"))
        case .dictionary(let entries):
            line.append(UInt8(ascii: "{"))
            for (index, (key, item)) in entries.sorted(by: { $0.key < $1.key }).enumerated() {
                if index > 0 { line.append(UInt8(ascii: ",")) }
                JSONObject.appendQuoted(key, to: &line)
                line.append(UInt8(ascii: ":"))
                append(item, to: &line)
            }
            line.append(UInt8(ascii: "}"))
        }
    }
}

func currentMicroseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
}
