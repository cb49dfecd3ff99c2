import LedgerCore
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let systemWrite = Darwin.write
#endif

/// One line per event on standard error: `2026-11-25T11:00:09.123456Z info mqtt: granted ...`.
/// Cheap enough for a line per connection: the time is formatted by hand (no Foundation), the
/// line is built as bytes and written with one `write(2)` under a lock so lines never interleave.
public struct LineLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let sink: LineSink

    public init(label: String, level: Logger.Level, fileDescriptor: Int32 = 2) {
        self.logLevel = level
        self.sink = LineSink(fileDescriptor: fileDescriptor)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line: [UInt8] = []
        line.reserveCapacity(160)
        ISO8601Time.append(currentMicroseconds(), to: &line)
        line.append(0x20)
        line.append(contentsOf: event.level.rawValue.utf8)
        line.append(0x20)
        line.append(contentsOf: event.message.description.utf8)
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        if let provided = metadataProvider?.get() { all.merge(provided) { $1 } }
        for (key, value) in all.sorted(by: { $0.key < $1.key }) {
            line.append(0x20)
            line.append(contentsOf: key.utf8)
            line.append(UInt8(ascii: "="))
            line.append(contentsOf: "\(value)".utf8)
        }
        line.append(0x0A)
        sink.write(line)
    }
}

final class LineSink: Sendable {
    private let fileDescriptor: Int32
    private let lock = Mutex(())

    init(fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
    }

    func write(_ bytes: [UInt8]) {
        lock.withLock { _ in
            bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let written = systemWrite(fileDescriptor, raw.baseAddress! + offset, raw.count - offset)
                    if written < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    offset += written
                }
            }
        }
    }
}

