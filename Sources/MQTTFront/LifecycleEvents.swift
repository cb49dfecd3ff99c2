import Broker
import Dispatch
import NIOCore
import SessionLedger
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Every ledger event, also published over MQTT (as Event Grid's MQTTClientSessionConnected /
/// Disconnected system events): QoS 1, not retained, on
/// `$custody/events/clients/{authenticationName}/sessions/{sessionName}`, as one JSON object
/// with the fields of `custody-audit export` (seq, time, kind, reason, authenticationName,
/// sessionName, connection, protocolVersion, cleanStart, sessionExpiryInterval,
/// remoteAddress, hash).
///
/// Events come from the ledger's commit hook (`SessionLedger(onEvents:)`), commit after
/// commit, and are published in that order from one serial queue: a subscriber sees them in
/// sequence order. Events committed before the broker is attached (and recovery's) wait.
///
/// Only sessions allowed to read `$custody/...` may subscribe (`Broker.serverTopicPrefix`);
/// a `#` or `+/...` subscription never matches them (MQTT's `$` rule).
public final class LifecycleEventPublisher: Sendable {
    public static let topicPrefix = "$custody/events/clients/"

    private let queue = DispatchQueue(label: "custody.lifecycle-events")
    private struct State {
        var broker: Broker?
        var waiting: [CommittedEvent] = []
        var published: UInt64 = 0
    }
    private let state = Mutex(State())
    private let observer: (@Sendable ([CommittedEvent]) -> Void)?
    private let publishes: Bool

    /// `observer` sees every batch too, on the publisher's queue, in order (logs, metrics):
    /// work that should stay off the ledger's writer thread. `publishes` false: nobody may
    /// read the events (no event subscribers configured), so they are not published at all.
    public init(publishes: Bool = true, observer: (@Sendable ([CommittedEvent]) -> Void)? = nil) {
        self.publishes = publishes
        self.observer = observer
    }

    /// From now on events go to `broker`, starting with those that waited. Call once.
    public func attach(_ broker: Broker) {
        queue.async { [self] in
            let waiting = state.withLock { state in
                state.broker = broker
                defer { state.waiting = [] }
                return state.waiting
            }
            if publishes { send(waiting, to: broker) }
        }
    }

    /// The ledger's commit hook: hands the events on and returns at once.
    public func publish(_ events: [CommittedEvent]) {
        guard !events.isEmpty else { return }
        queue.async { [self] in
            observer?(events)
            guard publishes, let broker = state.withLock({ state -> Broker? in
                if state.broker == nil { state.waiting.append(contentsOf: events) }
                return state.broker
            }) else { return }
            send(events, to: broker)
        }
    }

    /// Returns once every event handed over so far is published (before the broker closes).
    public func drain() {
        queue.sync {}
    }

    /// Events published since start.
    public var published: UInt64 { state.withLock { $0.published } }

    private func send(_ events: [CommittedEvent], to broker: Broker) {
        for committed in events {
            let payload = ByteBuffer(bytes: Self.json(committed))
            broker.publishFromServer(topic: Self.topic(for: committed.event), payload: payload, qos: .atLeastOnce)
        }
        state.withLock { $0.published += UInt64(events.count) }
    }

    /// `$custody/events/clients/{authenticationName}/sessions/{sessionName}`, each name one
    /// topic level: `/`, `+`, `#`, `%`, NUL and other control characters are written as
    /// `%XX` (their UTF-8 bytes in hex, upper case), so that a name can neither add levels nor
    /// act as a wildcard and two different names never share a topic; everything else is
    /// kept as is (original case). An empty name is an empty level.
    public static func topic(for event: LedgerEvent) -> String {
        var topic = topicPrefix
        topic += escapedLevel(event.authenticationName.value)
        topic += "/sessions/"
        topic += escapedLevel(event.sessionName.value)
        return topic
    }

    public static func escapedLevel(_ name: String) -> String {
        let needsEscape: (UInt8) -> Bool = { byte in
            byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "+")
                || byte == UInt8(ascii: "#") || byte == UInt8(ascii: "%")
        }
        guard name.utf8.contains(where: needsEscape) else { return name }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(name.utf8.count + 8)
        for byte in name.utf8 {
            if needsEscape(byte) {
                bytes.append(UInt8(ascii: "%"))
                bytes.append(hexUpper[Int(byte >> 4)])
                bytes.append(hexUpper[Int(byte & 0xF)])
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static let hexUpper = Array("0123456789ABCDEF".utf8)

    /// The event as `custody-audit export` prints it (same fields, same order, same forms).
    public static func json(_ committed: CommittedEvent) -> [UInt8] {
        let event = committed.event
        var out: [UInt8] = []
        out.reserveCapacity(384)
        var first = true
        func key(_ name: String) {
            out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: name.utf8)
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func null() { out.append(contentsOf: "null".utf8) }
        key("seq")
        out.append(contentsOf: String(event.sequence).utf8)
        key("time")
        out.append(UInt8(ascii: "\""))
        appendISO8601(microseconds: event.timestamp, to: &out)
        out.append(UInt8(ascii: "\""))
        key("kind")
        appendJSONString(event.kind.name, to: &out)
        key("reason")
        if let reason = event.kind.reasonName { appendJSONString(reason, to: &out) } else { null() }
        key("authenticationName")
        appendJSONString(event.authenticationName.value, to: &out)
        key("sessionName")
        appendJSONString(event.sessionName.value, to: &out)
        key("connection")
        out.append(contentsOf: String(event.connection).utf8)
        key("protocolVersion")
        if event.protocolVersion == .unknown { null() } else { out.append(contentsOf: String(event.protocolVersion.rawValue).utf8) }
        key("cleanStart")
        out.append(contentsOf: (event.cleanStart ? "true" : "false").utf8)
        key("sessionExpiryInterval")
        out.append(contentsOf: String(event.expiryInterval).utf8)
        key("remoteAddress")
        if event.remoteAddress.isEmpty { null() } else { appendJSONString(event.remoteAddress, to: &out) }
        key("hash")
        out.append(UInt8(ascii: "\""))
        out.append(contentsOf: committed.hash.hex.utf8)
        out.append(UInt8(ascii: "\""))
        out.append(UInt8(ascii: "}"))
        return out
    }
}

/// A JSON string (RFC 8259 escapes; control characters as \u00XX).
func appendJSONString(_ value: String, to out: inout [UInt8]) {
    let hex = Array("0123456789abcdef".utf8)
    out.append(UInt8(ascii: "\""))
    for byte in value.utf8 {
        switch byte {
        case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
        case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
        case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
        case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
        case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
        case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
        case 0x00..<0x20, 0x7F:
            out.append(contentsOf: Array("\\u00".utf8))
            out.append(hex[Int(byte >> 4)])
            out.append(hex[Int(byte & 0xF)])
        default: out.append(byte)
        }
    }
    out.append(UInt8(ascii: "\""))
}

/// `YYYY-MM-DDThh:mm:ss.uuuuuuZ` (UTC) for microseconds since the epoch.
func appendISO8601(microseconds: Int64, to line: inout [UInt8]) {
    var seconds = time_t(microseconds >= 0 ? microseconds / 1_000_000 : (microseconds - 999_999) / 1_000_000)
    let fraction = Int(microseconds - Int64(seconds) * 1_000_000)
    var parts = tm()
    gmtime_r(&seconds, &parts)
    func digits(_ value: Int, _ count: Int) {
        var divisor = 1
        for _ in 1..<count { divisor *= 10 }
        var value = value
        while divisor > 0 {
            line.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
            value %= divisor
            divisor /= 10
        }
    }
    digits(Int(parts.tm_year) + 1900, 4)
    line.append(UInt8(ascii: "-"))
    digits(Int(parts.tm_mon) + 1, 2)
    line.append(UInt8(ascii: "-"))
    digits(Int(parts.tm_mday), 2)
    line.append(UInt8(ascii: "T"))
    digits(Int(parts.tm_hour), 2)
    line.append(UInt8(ascii: ":"))
    digits(Int(parts.tm_min), 2)
    line.append(UInt8(ascii: ":"))
    digits(Int(parts.tm_sec), 2)
    line.append(UInt8(ascii: "."))
    digits(fraction, 6)
    line.append(UInt8(ascii: "Z"))
}
