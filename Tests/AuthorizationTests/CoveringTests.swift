import Testing

@testable import Authorization

@Suite("Matching and covering")
struct CoveringTests {
    func levels(_ filter: String) -> [FilterLevel] {
        guard let levels = TopicFilter.levels(of: filter) else { fatalError("invalid filter \(filter)") }
        return levels
    }

    func matches(_ filter: String, _ topic: String) -> Bool { TopicFilter.matches(levels(filter), topic: topic) }
    func covers(_ template: String, _ filter: String) -> Bool { TopicFilter.covers(levels(template), levels(filter)) }
    func overlaps(_ a: String, _ b: String) -> Bool { TopicFilter.overlaps(levels(a), levels(b)) }

    @Test func mqttMatching() {
        #expect(matches("a/b", "a/b"))
        #expect(!matches("a/b", "a/b/c") && !matches("a/b", "a") && !matches("a/b", "a/c"))
        #expect(matches("a/+", "a/b") && !matches("a/+", "a/b/c") && !matches("a/+", "a"))
        #expect(matches("a/+", "a/"), "an empty level is a level")
        #expect(matches("a/#", "a") && matches("a/#", "a/b/c") && !matches("a/#", "b"))
        #expect(matches("#", "a/b") && matches("+/+", "/x"))
        #expect(matches("+/b", "x/b") && !matches("+/b", "x/c"))
    }

    @Test func dollarTopicsAreNotMatchedByALeadingWildcard() {
        #expect(!matches("#", "$SYS/x") && !matches("+/x", "$SYS/x") && !matches("+", "$SYS"))
        #expect(matches("$SYS/#", "$SYS/x") && matches("$SYS/+", "$SYS/x"))
        #expect(matches("a/#", "a/$x") && matches("a/+", "a/$x"), "only the first level counts")
    }

    @Test func covering() {
        #expect(covers("machines/#", "machines/+/alert"))
        #expect(!covers("machines/+/alert", "machines/#"))
        #expect(covers("a/+", "a/b") && !covers("a/+", "a/#") && !covers("a/+", "a"))
        #expect(covers("a/#", "a") && covers("a/#", "a/#") && !covers("a/b/#", "a/#"))
        #expect(covers("#", "#") && covers("#", "+/+/#") && covers("+/#", "#"))
        #expect(!covers("a/+/#", "a/#"), "a/# matches a, which a/+/# does not")
        #expect(covers("+/+", "a/+") && !covers("a/+", "+/+"))
        #expect(covers("#", "a/$x"))
        #expect(!covers("#", "$SYS/#") && !covers("+/#", "$SYS/x"))
        #expect(covers("$SYS/#", "$SYS/broker/+") && !covers("$SYS/#", "+/broker"))
    }

    @Test func sharedSubscriptionsAreUnwrapped() {
        #expect(TopicFilter.unshared("$share/g/a/b") == "a/b")
        #expect(TopicFilter.unshared("$share/g/#") == "#")
        #expect(TopicFilter.unshared("a/b") == "a/b")
        #expect(TopicFilter.unshared("$share/g") == nil)
        #expect(TopicFilter.unshared("$share/g/") == nil)
        #expect(TopicFilter.unshared("$share//a") == nil)
        #expect(TopicFilter.unshared("$share/+/a") == nil)
    }

    @Test func invalidFilters() {
        for filter in ["", "a/#/b", "a#", "a/b+", "+a", "a\0b"] {
            #expect(TopicFilter.levels(of: filter) == nil, "\(filter)")
        }
    }

    // MARK: - Brute force over a small alphabet

    static let literals = ["a", "b", "$s"]

    /// Every valid filter of up to `depth` levels over the literals, `+` and `#` (last only).
    static func allFilters(depth: Int) -> [String] {
        var result: [[String]] = [[]]
        var frontier: [[String]] = [[]]
        for _ in 0..<depth {
            var next: [[String]] = []
            for prefix in frontier {
                for level in literals + ["+"] { next.append(prefix + [level]) }
                result.append(prefix + ["#"])
            }
            result.append(contentsOf: next)
            frontier = next
        }
        return result.filter { !$0.isEmpty }.map { $0.joined(separator: "/") }
    }

    /// Every topic of 1...depth levels over the literals.
    static func allTopics(depth: Int) -> [String] {
        var result: [String] = []
        var frontier = [""]
        for level in 1...depth {
            frontier = frontier.flatMap { prefix in literals.map { level == 1 ? $0 : prefix + "/" + $0 } }
            result.append(contentsOf: frontier)
        }
        return result
    }

    @Test func coversAgreesWithBruteForce() {
        let filters = Self.allFilters(depth: 3)
        let topics = Self.allTopics(depth: 4)
        // 5 of one level, 4 × 5 of two, 16 × 5 of three; topics 3 + 9 + 27 + 81: one level
        // deeper than any filter, so a `#` that reaches further than the template shows.
        #expect(filters.count == 105 && topics.count == 120)
        let matchTable = filters.map { filter in (filter, topics.map { matches(filter, $0) }) }
        var disagreements: [String] = []
        for (template, templateMatches) in matchTable {
            for (filter, filterMatches) in matchTable {
                let expected = zip(filterMatches, templateMatches).allSatisfy { !$0 || $1 }
                if TopicFilter.covers(levels(template), levels(filter)) != expected {
                    disagreements.append("covers(\(template), \(filter)) should be \(expected)")
                }
            }
        }
        #expect(disagreements == [])
    }

    @Test func overlapsAgreesWithBruteForce() {
        let filters = Self.allFilters(depth: 3)
        let topics = Self.allTopics(depth: 4)
        let matchTable = filters.map { filter in (filter, topics.map { matches(filter, $0) }) }
        var disagreements: [String] = []
        for (a, aMatches) in matchTable {
            for (b, bMatches) in matchTable {
                let expected = zip(aMatches, bMatches).contains { $0 && $1 }
                if TopicFilter.overlaps(levels(a), levels(b)) != expected {
                    disagreements.append("overlaps(\(a), \(b)) should be \(expected)")
                }
            }
        }
        #expect(disagreements == [])
    }

    @Test func overlapping() {
        #expect(overlaps("a/#", "a") && overlaps("+/b", "a/+") && !overlaps("a/b", "a/c"))
        #expect(!overlaps("#", "$SYS/x") && overlaps("$SYS/#", "$SYS/+"))
    }
}
