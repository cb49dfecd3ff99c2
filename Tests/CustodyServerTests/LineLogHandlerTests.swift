import Foundation
import Logging
import Testing

@testable import CustodyServer

@Suite("line log handler")
struct LineLogHandlerTests {
    /// One line per event: UTC timestamp with microseconds, level, message, sorted metadata.
    @Test func writesOneFormattedLinePerEvent() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]) }
        var logger = Logger(label: "test") { label in LineLogHandler(label: label, level: .info, fileDescriptor: ends[1]) }
        logger[metadataKey: "b"] = "2"
        logger.debug("not written")
        logger.info("mqtt: granted session=s1", metadata: ["a": "1"])
        logger.warning("second")
        close(ends[1])
        let text = String(decoding: FileHandle(fileDescriptor: ends[0]).readDataToEndOfFile(), as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 3 && lines[2].isEmpty, "\(text)")
        let pattern = #/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z (\w+) (.*)$/#
        let first = try #require(try pattern.wholeMatch(in: lines[0]), "\(lines[0])")
        #expect(first.1 == "info")
        #expect(first.2 == "mqtt: granted session=s1 a=1 b=2")
        let second = try #require(try pattern.wholeMatch(in: lines[1]))
        #expect(second.1 == "warning")
        #expect(second.2 == "second b=2")
        // The year is this one: the clock is read, not made up.
        let year = Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: Date()).year!
        #expect(lines[0].hasPrefix("\(year)-"))
    }
}
