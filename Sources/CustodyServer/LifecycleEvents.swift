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
/// Events come from the ledger's commit hook (`LMDBSessionLedger(onEvents:)`), commit after
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
        // Nobody subscribed under `$custody`: the messages would reach no one, so they are
        // only counted, not made (JSON, topic) nor routed.
        guard broker.mayDeliverServerTopic(Self.topicPrefix) else {
            broker.countServerPublished(events.count)
            state.withLock { $0.published += UInt64(events.count) }
            return
        }
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

    /// The event as `custody-audit export` prints it (same fields, same order, same forms:
    /// both write with LedgerCore's JSONObject).
    public static func json(_ committed: CommittedEvent) -> [UInt8] {
        let event = committed.event
        var out: [UInt8] = []
        out.reserveCapacity(384)
        var j = JSONObject(into: out)
        j.int("seq", event.sequence)
        j.time("time", event.timestamp)
        j.string("kind", event.kind.name)
        j.string("reason", event.kind.reasonName)
        j.string("authenticationName", event.authenticationName.value)
        j.string("sessionName", event.sessionName.value)
        j.int("connection", event.connection)
        j.int("protocolVersion", event.protocolVersion == .unknown ? nil : event.protocolVersion.rawValue)
        j.bool("cleanStart", event.cleanStart)
        j.int("sessionExpiryInterval", event.expiryInterval)
        j.string("remoteAddress", event.remoteAddress.isEmpty ? nil : event.remoteAddress)
        committed.hash.withBytes { j.hex("hash", $0) }
        out = j.close()
        return out
    }
}

