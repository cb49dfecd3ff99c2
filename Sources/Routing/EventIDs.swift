import Synchronization

/// Routed messages' CloudEvent ids: unique per namespace and stable across retries (an id is
/// stored with its event). A random 64-bit prefix drawn once per start (the system's random
/// source), then a counter: `0f3c9a1e5b7d2c48-1`, `…-2`. Foundation's `UUID()` read
/// /dev/urandom through a new file descriptor for every message (measured: an open, a read
/// and a close per routed message); this takes none.
final class EventIDs: Sendable {
    private let prefix: String
    private let counter = Atomic<UInt64>(0)

    init() {
        var generator = SystemRandomNumberGenerator()
        let random = generator.next() as UInt64
        let hex = String(random, radix: 16)
        prefix = String(repeating: "0", count: 16 - hex.count) + hex + "-"
    }

    func next() -> String {
        let number = counter.add(1, ordering: .relaxed).newValue
        return prefix + String(number, radix: 16)
    }
}
