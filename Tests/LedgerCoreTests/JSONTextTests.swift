import Foundation
import LedgerCore
import Testing

/// JSON text written by hand (`JSONObject`, `ISO8601Time`): what Foundation's parser reads
/// back is what was written, for every kind of string, integer and time.
@Suite struct JSONTextTests {
    /// Every byte that must be escaped, runs between them, quotes, backslashes and non-ASCII.
    @Test func stringsReadBackAsWritten() throws {
        var texts = ["", "plain", "\"", "\\", "a\"b\\c", "tab\there", "line\nbreak\r\n", "\u{7F}del", "é ü 漢字 🙂",
                     "\"leading", "trailing\\", "/slash/"]
        texts.append(String(decoding: (0..<0x20).map { UInt8($0) }, as: UTF8.self))
        var random = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let scalars = (0..<Int.random(in: 0...40, using: &random)).map { _ in
                Unicode.Scalar(UInt8.random(in: 0...0x7F, using: &random))
            }
            texts.append(String(String.UnicodeScalarView(scalars)))
        }
        for text in texts {
            var object = JSONObject()
            object.string("s", text)
            object.string("b", bytes: UnsafeRawBufferPointer(start: nil, count: 0), nullIfEmpty: true)
            let parsed = try #require(try JSONSerialization.jsonObject(with: Data(object.close())) as? [String: Any])
            #expect(parsed["s"] as? String == text, "\(Array(text.utf8))")
            #expect(parsed["b"] is NSNull)
        }
    }

    /// Control characters are written as JSON's escapes, not raw.
    @Test func controlCharactersAreEscaped() {
        var object = JSONObject()
        object.string("s", "a\u{01}\n\u{7F}")
        #expect(String(decoding: object.close(), as: UTF8.self) == #"{"s":"a\u0001\n\u007f"}"#)
    }

    @Test func integersOfEveryWidth() throws {
        var object = JSONObject()
        object.int("zero", 0)
        object.int("min", Int64.min)
        object.int("max", Int64.max)
        object.int("umax", UInt64.max)
        object.int("negative", -42)
        object.int("byte", UInt8(200))
        object.int("none", Int?.none)
        object.bool("yes", true)
        object.bool("no", false)
        let text = String(decoding: object.close(), as: UTF8.self)
        #expect(text == #"{"zero":0,"min":-9223372036854775808,"max":9223372036854775807,"umax":18446744073709551615,"#
            + #""negative":-42,"byte":200,"none":null,"yes":true,"no":false}"#)
    }

    /// Times round-trip through `parse`, including before 1970 and at the ends of the years
    /// written with four digits.
    @Test func timesRoundTrip() {
        let samples: [Int64] = [0, 1, -1, 1_700_000_000_123_456, 951_782_400_000_000 /* 2000-02-29 */,
                                -62_135_596_800_000_000 /* 0001-01-01 */, 253_402_300_799_999_999 /* 9999-12-31 */]
        for micros in samples {
            let text = ISO8601Time.format(micros)
            #expect(text.utf8.count == 27, "\(text)")
            #expect(ISO8601Time.parse(text) == micros, "\(text)")
        }
        #expect(ISO8601Time.format(0) == "1970-01-01T00:00:00.000000Z")
        #expect(ISO8601Time.format(-1) == "1969-12-31T23:59:59.999999Z")
        #expect(ISO8601Time.format(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456Z")
        // Past year 9999 the year is written as it is.
        #expect(ISO8601Time.format(253_402_300_800_000_000) == "10000-01-01T00:00:00.000000Z")
    }
}
