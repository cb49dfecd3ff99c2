import MQTTCodec

/// Topic names and filters (MQTT 5.0 section 4.7, 3.1.1 section 4.7).
public enum TopicRules {
    /// Why a topic filter cannot be subscribed to.
    public enum FilterProblem: Sendable, Equatable {
        case empty
        /// `#` not alone in the last level, or `+` not alone in its level.
        case misplacedWildcard
        case nullCharacter
        /// `$share/...` without a valid share name (empty, or containing `+`, `#`) or without
        /// a filter after it (MQTT 5.0 section 4.8.2).
        case invalidShare
    }

    /// `$share/{ShareName}/{filter}` split into its share name and filter; nil when `filter`
    /// is not a shared subscription. The parts are not checked (see `checkFilter`).
    public static func splitShare(_ filter: String) -> (group: Substring, filter: Substring)? {
        guard filter.utf8.starts(with: "$share/".utf8) else { return nil }
        let rest = filter.dropFirst(7)
        guard let slash = rest.firstIndex(of: "/") else { return (rest, rest[rest.endIndex...]) }
        return (rest[..<slash], rest[rest.index(after: slash)...])
    }

    /// A filter is levels separated by `/`; `+` fills one whole level, `#` one whole level and
    /// only the last. An empty level is allowed (`a//b`, `/a`).
    /// A shared subscription `$share/{ShareName}/{filter}` needs a share name of at least one
    /// character without `/`, `+` or `#`, and a valid filter.
    public static func checkFilter(_ filter: String) -> FilterProblem? {
        if let (group, rest) = splitShare(filter) {
            if group.isEmpty || group.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 })
                || rest.isEmpty
            {
                return .invalidShare
            }
            return checkPlainFilter(rest.utf8)
        }
        return checkPlainFilter(filter.utf8)
    }

    private static func checkPlainFilter<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> FilterProblem? {
        if bytes.isEmpty { return .empty }
        var levelStart = true
        var previousWasWildcard = false
        var sawHash = false
        for byte in bytes {
            if sawHash { return .misplacedWildcard }
            switch byte {
            case 0: return .nullCharacter
            case UInt8(ascii: "/"):
                levelStart = true
                previousWasWildcard = false
                continue
            case UInt8(ascii: "+"), UInt8(ascii: "#"):
                guard levelStart else { return .misplacedWildcard }
                if byte == UInt8(ascii: "#") { sawHash = true }
                previousWasWildcard = true
                levelStart = false
                continue
            default:
                if previousWasWildcard { return .misplacedWildcard }
                levelStart = false
            }
        }
        return nil
    }

    /// A topic name: not empty, no wildcard, no U+0000.
    public static func isValidTopicName(_ topic: String) -> Bool {
        let bytes = topic.utf8
        if bytes.isEmpty { return false }
        return !bytes.contains { $0 == 0 || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }
    }

    /// Whether `filter` matches `topic`, by the same rules as the tree. For tests and checks;
    /// routing goes through the tree.
    public static func matches(filter: String, topic: String) -> Bool {
        let f = filter.split(separator: "/", omittingEmptySubsequences: false)
        let t = topic.split(separator: "/", omittingEmptySubsequences: false)
        if t.first?.first == "$", let first = f.first, first == "+" || first == "#" { return false }
        var i = 0
        while i < f.count {
            if f[i] == "#" { return true }
            guard i < t.count else { return false }
            if f[i] != "+" && f[i] != t[i] { return false }
            i += 1
        }
        return i == t.count
    }
}

/// One subscription of one session, as the tree holds it.
struct Subscriber {
    let session: SessionState
    var options: MQTTSubscriptionOptions
    var identifier: UInt32?
    /// Which SUBSCRIBE made it (`Broker.subscriptionStamps`; 0: loaded): a failed commit takes
    /// back only the subscription it wrote, not an equal one a later SUBSCRIBE made.
    var stamp: UInt64 = 0
}

/// One level of the tree. `exact` holds subscriptions whose filter ends at this node,
/// `multi` those whose filter is this node's path followed by `/#` (which also match the
/// path itself: `a/#` matches `a`); `sharedExact` and `sharedMulti` the same for shared
/// subscriptions, one entry per share (share name + filter).
final class TopicNode {
    var children: [Substring: TopicNode] = [:]
    var plus: TopicNode?
    var exact: [Subscriber] = []
    var multi: [Subscriber] = []
    var sharedExact: [ShareGroup] = []
    var sharedMulti: [ShareGroup] = []

    var isEmpty: Bool {
        children.isEmpty && plus == nil && exact.isEmpty && multi.isEmpty && sharedExact.isEmpty && sharedMulti.isEmpty
    }

    /// Takes the subtree apart one node at a time: released the usual way, a filter of
    /// tens of thousands of levels would be freed by as many nested deinits and overflow
    /// the stack.
    deinit {
        guard !children.isEmpty || plus != nil else { return }
        var pending: [TopicNode] = Array(children.values)
        children = [:]
        if let plus { pending.append(plus) }
        plus = nil
        while let node = pending.popLast() {
            pending.append(contentsOf: node.children.values)
            node.children = [:]
            if let next = node.plus { pending.append(next) }
            node.plus = nil
        }
    }
}

/// One shared subscription `$share/{ShareName}/{filter}` and the sessions subscribed to it.
/// Each matching message goes to one member (MQTT 5.0 section 4.8.2), chosen round robin:
/// first a connected member with room in its in-flight window and nothing queued, else any
/// connected member, else (no member connected) a detached persistent member, whose queue
/// keeps it until it returns. A group without members gets nothing.
final class ShareGroup {
    let key: String
    var members: [Subscriber] = []
    var cursor = 0

    init(key: String) { self.key = key }

    func pick() -> Subscriber? {
        let count = members.count
        guard count > 0 else { return nil }
        var busy: Int?
        var offline: Int?
        for step in 0..<count {
            let index = (cursor + step) % count
            let session = members[index].session
            if session.sink != nil {
                if session.queue.isEmpty && session.inflight.count < session.window {
                    cursor = index + 1
                    return members[index]
                }
                if busy == nil { busy = index }
            } else if session.persistent, offline == nil {
                offline = index
            }
        }
        guard let chosen = busy ?? offline else { return nil }
        cursor = chosen + 1
        return members[chosen]
    }
}

/// What one PUBLISH means for one session after all its matching subscriptions are merged
/// (MQTT 5.0 section 3.3.4): one copy, at the highest QoS granted, with every matching
/// subscription identifier.
struct Match {
    let session: SessionState
    var qos: MQTTQoS
    var retainAsPublished: Bool
    var identifiers: [UInt32]
    /// The share this copy was chosen for (a separate copy per share).
    var share: ShareGroup? = nil
}

/// Subscriptions by filter level. Not thread-safe: the broker's lock guards it.
struct TopicTree {
    let root = TopicNode()
    /// Bumped per routing; a session that carries the current stamp has a `Match` already
    /// (at `matchIndex`), so merging overlaps needs no per-publish dictionary.
    private var stamp: UInt64 = 0

    /// Shared subscriptions by their full filter (`$share/{ShareName}/{filter}`).
    private(set) var groups: [String: ShareGroup] = [:]
    /// Routing scratch: the shares a topic matched.
    private var sharedHits: [ShareGroup] = []
    /// Routing scratch: the nodes still to walk (kept, so that routing does not allocate).
    private var pending: [(node: TopicNode, index: Int)] = []
    /// `match`'s scratch: the topic's levels (kept, so a PUBLISH allocates none).
    private var levels: [Substring] = []

    /// Adds or replaces `subscriber`'s subscription to `filter` (which may be `$share/...`).
    mutating func insert(_ filter: String, _ subscriber: Subscriber) {
        if let (_, inner) = TopicRules.splitShare(filter) {
            if let group = groups[filter] {
                replace(&group.members, subscriber)
                return
            }
            let group = ShareGroup(key: filter)
            group.members.append(subscriber)
            groups[filter] = group
            let (node, multi) = self.node(for: String(inner))
            if multi { node.sharedMulti.append(group) } else { node.sharedExact.append(group) }
            return
        }
        let (node, multi) = self.node(for: filter)
        if multi { replace(&node.multi, subscriber) } else { replace(&node.exact, subscriber) }
    }

    /// The node a filter ends at (created as needed), and whether the filter ends with `/#`.
    private func node(for filter: String) -> (TopicNode, Bool) {
        var node = root
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in levels.enumerated() {
            if level == "#" && index == levels.count - 1 { return (node, true) }
            if level == "+" {
                if node.plus == nil { node.plus = TopicNode() }
                node = node.plus!
            } else if let child = node.children[level] {
                node = child
            } else {
                let child = TopicNode()
                node.children[level] = child
                node = child
            }
        }
        return (node, false)
    }

    private func replace(_ list: inout [Subscriber], _ subscriber: Subscriber) {
        if let index = list.firstIndex(where: { $0.session === subscriber.session }) {
            list[index] = subscriber
        } else {
            list.append(subscriber)
        }
    }

    /// Removes `session`'s subscription to `filter`; returns whether there was one.
    @discardableResult
    mutating func remove(_ filter: String, session: SessionState) -> Bool {
        if let (_, inner) = TopicRules.splitShare(filter) {
            guard let group = groups[filter], removeSubscriber(&group.members, session) else { return false }
            guard group.members.isEmpty else { return true }
            groups[filter] = nil
            let levels = String(inner).split(separator: "/", omittingEmptySubsequences: false)
            _ = remove(levels[...], from: root) { node, multi in
                if multi {
                    node.sharedMulti.removeAll { $0 === group }
                } else {
                    node.sharedExact.removeAll { $0 === group }
                }
                return true
            }
            return true
        }
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        return remove(levels[...], from: root) { node, multi in
            multi ? removeSubscriber(&node.multi, session) : removeSubscriber(&node.exact, session)
        }
    }

    /// Finds the node `levels` end at, lets `body` remove the subscription there, then prunes
    /// the nodes left empty on the way back. A loop, not a recursion: a filter may have as
    /// many levels as a packet has bytes.
    private func remove(
        _ levels: ArraySlice<Substring>, from root: TopicNode, _ body: (TopicNode, Bool) -> Bool
    ) -> Bool {
        var path: [(parent: TopicNode, level: Substring?)] = []  // nil level: the `+` child
        var node = root
        var multi = false
        for (offset, level) in levels.enumerated() {
            if level == "#" && offset == levels.count - 1 {
                multi = true
                break
            }
            let child: TopicNode?
            if level == "+" {
                child = node.plus
                path.append((node, nil))
            } else {
                child = node.children[level]
                path.append((node, level))
            }
            guard let child else { return false }
            node = child
        }
        let removed = body(node, multi)
        while let (parent, level) = path.popLast() {
            if let level {
                guard let child = parent.children[level], child.isEmpty else { break }
                parent.children[level] = nil
            } else {
                guard let child = parent.plus, child.isEmpty else { break }
                parent.plus = nil
            }
        }
        return removed
    }

    private func removeSubscriber(_ list: inout [Subscriber], _ session: SessionState) -> Bool {
        guard let index = list.firstIndex(where: { $0.session === session }) else { return false }
        list.remove(at: index)
        return true
    }

    /// Every session with a subscription matching `topic`, merged per session. Subscriptions
    /// with No Local are skipped for the publishing session.
    /// `shares` false: shared subscriptions are left out (and no member is picked).
    mutating func match(_ topic: String, publisher: SessionState?, into matches: inout [Match], shares: Bool = true) {
        stamp &+= 1
        // The levels, as `split(separator: "/", omittingEmptySubsequences: false)` gives them,
        // into a kept array: no allocation per PUBLISH.
        var levels = self.levels
        self.levels = []
        levels.removeAll(keepingCapacity: true)
        let utf8 = topic.utf8
        if utf8.allSatisfy({ $0 < 0x80 }) {
            var start = topic.startIndex
            var index = utf8.startIndex
            while index != utf8.endIndex {
                if utf8[index] == UInt8(ascii: "/") {
                    levels.append(topic[start..<index])
                    start = utf8.index(after: index)
                }
                utf8.formIndex(after: &index)
            }
            levels.append(topic[start...])
        } else {
            // Beyond ASCII a "/" may begin a longer Character: split as filters are (insert).
            levels.append(contentsOf: topic.split(separator: "/", omittingEmptySubsequences: false))
        }
        defer {
            levels.removeAll(keepingCapacity: true)
            self.levels = levels
        }
        // Wildcards at the first level do not match topics beginning with `$` (4.7.2).
        let dollar = topic.utf8.first == UInt8(ascii: "$")
        var collector = Collector(stamp: stamp, publisher: publisher)
        walk(root, levels, 0, dollar: dollar, &collector, &matches)
        guard !sharedHits.isEmpty else { return }
        guard shares else {
            sharedHits.removeAll(keepingCapacity: true)
            return
        }
        // One member per share, as a separate copy: a session with an overlapping plain
        // subscription may get the message twice (MQTT 5.0 section 4.8.2).
        for group in sharedHits {
            guard let member = group.pick() else { continue }
            matches.append(Match(
                session: member.session, qos: member.options.qos, retainAsPublished: member.options.retainAsPublished,
                identifiers: member.identifier.map { [$0] } ?? [], share: group))
        }
        sharedHits.removeAll(keepingCapacity: true)
    }

    private struct Collector {
        let stamp: UInt64
        let publisher: SessionState?

        /// Keeps the subscriptions' QoS; the caller lowers it to the message's.
        func add(_ subscribers: [Subscriber], _ matches: inout [Match]) {
            for subscriber in subscribers {
                let session = subscriber.session
                if subscriber.options.noLocal, session === publisher { continue }
                let granted = subscriber.options.qos
                if session.matchStamp == stamp {
                    let index = session.matchIndex
                    if granted > matches[index].qos { matches[index].qos = granted }
                    if subscriber.options.retainAsPublished { matches[index].retainAsPublished = true }
                    if let id = subscriber.identifier { matches[index].identifiers.append(id) }
                } else {
                    session.matchStamp = stamp
                    session.matchIndex = matches.count
                    matches.append(Match(
                        session: session, qos: granted, retainAsPublished: subscriber.options.retainAsPublished,
                        identifiers: subscriber.identifier.map { [$0] } ?? []))
                }
            }
        }
    }

    /// Depth first, children before `+`, as a loop with a stack of its own: a subscription
    /// may be tens of thousands of levels deep.
    private mutating func walk(
        _ root: TopicNode, _ levels: [Substring], _ start: Int, dollar: Bool,
        _ collector: inout Collector, _ matches: inout [Match]
    ) {
        pending.append((root, start))
        while let (node, index) = pending.popLast() {
            let top = index == 0 && dollar
            if !top {
                if !node.multi.isEmpty { collector.add(node.multi, &matches) }
                if !node.sharedMulti.isEmpty { sharedHits.append(contentsOf: node.sharedMulti) }
            }
            if index == levels.count {
                collector.add(node.exact, &matches)
                if !node.sharedExact.isEmpty { sharedHits.append(contentsOf: node.sharedExact) }
                continue
            }
            // Pushed in reverse: the exact child is walked first, as a recursion would.
            if let plus = node.plus, !top { pending.append((plus, index + 1)) }
            if let child = node.children[levels[index]] { pending.append((child, index + 1)) }
        }
    }
}
