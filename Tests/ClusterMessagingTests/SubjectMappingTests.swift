import Broker
import CustodyTesting
import Foundation
import NATSClient
import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import ClusterMessaging

/// Random topics and filters from a fixed seed, built from the characters NATS gives a meaning
/// to, the escape character and its digits, empty levels, `$` and non-ASCII.
struct TopicGenerator {
    var random: SplitMix
    static let pieces = ["a", "b", "", ".", " ", "*", ">", "%", "2E", "%25", "\t", "é", "$", "-", "x.y", "\u{7F}", "日本"]

    init(seed: UInt64) { random = SplitMix(seed: seed) }

    mutating func pick(_ count: Int) -> Int { Int(random.next() % UInt64(count)) }

    mutating func level() -> String {
        (0..<pick(4)).map { _ in Self.pieces[pick(Self.pieces.count)] }.joined()
    }

    mutating func topic() -> String {
        while true {
            let topic = (0...pick(5)).map { _ in level() }.joined(separator: "/")
            if TopicRules.isValidTopicName(topic) { return topic }
        }
    }

    /// A filter built from `topic`: some levels made `+`, sometimes cut short with `#`.
    mutating func filter(from topic: String) -> String {
        var levels = topic.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        for index in levels.indices where pick(4) == 0 { levels[index] = "+" }
        if pick(3) == 0 { levels = Array(levels.prefix(pick(levels.count + 1))) + ["#"] }
        if pick(5) == 0, !levels.isEmpty { levels[pick(levels.count)] = level() }
        return levels.joined(separator: "/")
    }
}

/// NATS's matching of literal subjects by a subscription subject: `*` one token, `>` one or more.
func natsMatches(_ pattern: String, _ subject: String) -> Bool {
    let p = pattern.split(separator: ".", omittingEmptySubsequences: false)
    let s = subject.split(separator: ".", omittingEmptySubsequences: false)
    for (index, token) in p.enumerated() {
        if token == ">" { return s.count > index }
        guard index < s.count else { return false }
        if token != "*" && token != s[index] { return false }
    }
    return p.count == s.count
}

@Suite("MQTT topics as NATS subjects")
struct SubjectMappingTests {
    let mapping = SubjectMapping(prefix: "custody.m")

    @Test func examples() {
        #expect(mapping.subject(topic: "a/b/c") == "custody.m.a.b.c")
        #expect(mapping.subject(topic: "a.b/ c*/>/%") == "custody.m.a%2Eb.%20c%2A.%3E.%25")
        #expect(mapping.subject(topic: "/a//") == "custody.m.%.a.%.%")
        #expect(mapping.subjects(filter: "a/+/#") == ["custody.m.a.*.>", "custody.m.a.*"])
        #expect(mapping.subjects(filter: "#") == ["custody.m.>"])
        #expect(mapping.subjects(filter: "+") == ["custody.m.*"])
        #expect(mapping.topic(subject: "custody.m.a%2Eb.%") == "a.b/")
        // Not made by the mapping: another prefix, a lowercase or needless escape, a broken one.
        #expect(mapping.topic(subject: "other.a") == nil)
        #expect(mapping.topic(subject: "custody.m.a%2eb") == nil)
        #expect(mapping.topic(subject: "custody.m.%61") == nil)
        #expect(mapping.topic(subject: "custody.m.a%2") == nil)
        #expect(mapping.topic(subject: "custody.m.a..b") == nil)
    }

    /// Every topic comes back from its subject, different topics have different subjects, and
    /// every subject is one NATS takes as a literal subject.
    @Test func roundTripIsExactAndInjective() {
        var generator = TopicGenerator(seed: 1919)
        var seen: [String: String] = [:]
        for _ in 0..<20_000 {
            let topic = generator.topic()
            let subject = mapping.subject(topic: topic)
            #expect(mapping.topic(subject: subject) == topic)
            if let earlier = seen[subject] { #expect(earlier == topic) }
            seen[subject] = topic
            let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
            #expect(tokens.allSatisfy { !$0.isEmpty && $0 != "*" && $0 != ">" })
            #expect(!subject.utf8.contains { $0 <= 0x20 || $0 == 0x7F })
        }
        #expect(seen.count > 5_000)
    }

    /// For every filter and topic, NATS's matching of the mapped subjects says what MQTT's does;
    /// except MQTT's rule that a leading wildcard skips `$` topics, which the broker's own tree
    /// applies on each node (NATS would match them).
    @Test func filterMatchingAgreesWithMQTT() {
        var generator = TopicGenerator(seed: 2121)
        let topics = (0..<400).map { _ in generator.topic() }
        var matched = 0
        var checked = 0
        for _ in 0..<400 {
            let filter = generator.filter(from: topics[generator.pick(topics.count)])
            guard TopicRules.checkFilter(filter) == nil else { continue }
            let subjects = mapping.subjects(filter: filter)
            for topic in topics {
                let mqtt = TopicRules.matches(filter: filter, topic: topic)
                let nats = subjects.contains { natsMatches($0, mapping.subject(topic: topic)) }
                // Under a leading wildcard the first level's text does not matter, but for the `$` rule.
                let dollarRule = topic.hasPrefix("$") && (filter.hasPrefix("+") || filter.hasPrefix("#"))
                let reference = dollarRule ? TopicRules.matches(filter: filter, topic: "_" + topic.dropFirst()) : mqtt
                #expect(nats == reference, "filter \(filter) topic \(topic)")
                checked += 1
                if mqtt { matched += 1 }
            }
        }
        #expect(checked > 50_000)
        #expect(matched > 1_000)
    }

    /// The same agreement with the real nats-server doing the matching: each mapped filter is
    /// subscribed, each mapped topic published; what arrives is what MQTT would deliver.
    @Test func realNATSServerMatchesAsMQTT() async throws {
        let nats = try await offPool { try RunningNATS("mapping") }
        defer { nats.cleanUp() }
        let connection = try await NATSConnection.connect(NATSOptions(servers: [NATSServer(url: nats.url)!]))
        var generator = TopicGenerator(seed: 77)
        let topics = (0..<150).map { _ in generator.topic() }.filter { !$0.hasPrefix("$") }
        var filters: [String] = []
        while filters.count < 40 {
            let filter = generator.filter(from: topics[generator.pick(topics.count)])
            if TopicRules.checkFilter(filter) == nil { filters.append(filter) }
        }
        let received = NIOLockedValueBox<Set<String>>([])
        for (index, filter) in filters.enumerated() {
            for subject in mapping.subjects(filter: filter) {
                try connection.subscribe(subject) { message in
                    received.withLockedValue { _ = $0.insert("\(index) \(String(buffer: message.payload))") }
                }
            }
        }
        try await connection.flush()
        for (index, topic) in topics.enumerated() {
            try connection.publish(mapping.subject(topic: topic), payload: ByteBuffer(string: "\(index)"))
        }
        try await connection.flush()
        var expected: Set<String> = []
        for (f, filter) in filters.enumerated() {
            for (t, topic) in topics.enumerated() where TopicRules.matches(filter: filter, topic: topic) {
                expected.insert("\(f) \(t)")
            }
        }
        var got = received.withLockedValue { $0 }
        for _ in 0..<100 where got != expected {
            try await Task.sleep(nanoseconds: 20_000_000)
            got = received.withLockedValue { $0 }
        }
        #expect(got == expected)
        #expect(expected.count > 100)
        await connection.close()
    }
}
