import MQTTCodec
import Testing

@testable import Broker

/// Routing splits a topic into levels without allocating (`TopicTree.match`): empty levels,
/// leading and trailing `/`, `$` topics and non-ASCII levels route as the reference matcher
/// (`TopicRules.matches`, which splits both sides with `split`) says.
@Suite("Topic levels")
struct TopicLevelsTests {
    static let filters = ["a//b", "/x", "x/", "+/+", "+", "#", "é/#", "a/+/c", "/", "+/x", "$SYS/#", "e\u{301}/n"]
    static let topics = ["a//b", "/x", "x/", "x", "a/b/c", "é/z", "é", "/", "//", "$SYS/a", "$SYS", "é/n", "e\u{301}/n", "a/\u{301}b"]

    @Test func everyTopicReachesTheFiltersTheReferenceMatches() async throws {
        let broker = try Broker(directory: nil)
        defer { broker.close() }
        var subscribers: [(filter: String, client: Client)] = []
        for (index, filter) in Self.filters.enumerated() {
            let client = broker.connect("s\(index)")
            _ = try await client.session.handle(subscribe([(filter, .atMostOnce)]))
            subscribers.append((filter, client))
        }
        let publisher = broker.connect("pub")
        for topic in Self.topics {
            _ = try await publisher.session.handle(publish(topic, "m"))
            for (filter, client) in subscribers {
                let got = client.sink.takePublishes().map(\.topicName)
                let expected = TopicRules.matches(filter: filter, topic: topic) ? [topic] : []
                #expect(got == expected, "filter \(filter) topic \(topic)")
            }
        }
    }
}
