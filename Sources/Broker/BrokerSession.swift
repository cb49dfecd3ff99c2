import LedgerCore
import MQTTCodec

/// One session as seen from one connection. Stale after a takeover or `detach`.
public final class BrokerSession: Sendable {
    public let name: SessionName
    let broker: Broker
    let state: SessionState
    let token: UInt64

    init(name: SessionName, broker: Broker, state: SessionState, token: UInt64) {
        self.name = name
        self.broker = broker
        self.state = state
        self.token = token
    }

    /// PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE from the client. Returns the
    /// direct answers (PUBACK, PUBREC, PUBCOMP, PUBREL, SUBACK, UNSUBACK) to write back, after whatever
    /// they promise is durable. Throws a BrokerError carrying an MQTTReasonCode when the client broke
    /// the protocol (e.g. PUBREL for an unknown id is NOT an error in v5: answer PUBCOMP 0x92) or
    /// when storage failed (the front then closes the connection with that reason code).
    ///
    /// Hand one connection's packets over one at a time, in the order they arrived.
    public func handle(_ packet: MQTTPacket) async throws(BrokerError) -> [MQTTPacket] {
        try await broker.handle(packet, from: self)
    }

    /// The same, without a wait where none is needed: `.answered` (a PUBLISH that makes nothing
    /// durable first, PUBACK, PUBREC, PUBCOMP), the answers on the caller's thread; `.decided`
    /// (a PUBLISH whose records must be committed): routed and queued now, the next packet may
    /// follow at once, and `later` hears its answers once they are durable; `.pending` (PUBREL,
    /// SUBSCRIBE, UNSUBSCRIBE): `later` hears them once decided, and nothing may follow before.
    /// `later` is called from another thread (the store's, or a task's), once.
    public func handleAtOnce(
        _ packet: MQTTPacket, later: @escaping @Sendable (Result<[MQTTPacket], BrokerError>) -> Void
    ) throws(BrokerError) -> AtOnce {
        try broker.handleAtOnce(packet, from: self, later: later)
    }

    /// The will message of this connection's CONNECT (nil: none). Call right after `attach`,
    /// before the first `handle`. It is published when the connection ends without a normal
    /// DISCONNECT (`Broker.detach(_:publishWill: true)`), after its Will Delay Interval
    /// (bounded by `sessionExpiryInterval` when given; 0 for a non-persistent session), unless
    /// the session is resumed first; at once when the session ends before the delay.
    public func setWill(_ will: MQTTWill?, sessionExpiryInterval: UInt32? = nil) {
        broker.setWill(will, sessionExpiryInterval: sessionExpiryInterval, for: self)
    }

    /// Who holds this session, for the publish tap (routes' CloudEvents): call right after
    /// `attach`, before the first `handle`.
    public func describePublisher(_ facts: PublisherFacts) {
        broker.locked {
            guard state.attachment == token else { return }
            state.publisher = facts
        }
    }

    /// The filters the session subscribes to now (restored ones of a resumed session included),
    /// for the front to check again when the rules change.
    public var subscriptionFilters: [String] {
        broker.locked { Array(state.subscriptions.keys) }
    }

    /// Whether this connection's client may subscribe to the server's own topics
    /// (`Broker.serverTopicPrefix`); false after `attach`. Others get 0x87 (3.1.1: 0x80) for
    /// such filters. Subscriptions already held (a resumed session) are not re-checked.
    public func allowServerTopics(_ allowed: Bool) {
        broker.allowServerTopics(allowed, for: self)
    }
}

/// How `BrokerSession.handleAtOnce` answers.
public enum AtOnce: Sendable, Equatable {
    /// Answered now.
    case answered([MQTTPacket])
    /// Decided now; the answers come through `later`, and the next packet may be handed over.
    case decided
    /// The answers, and the decision, come through `later`; hand nothing over before.
    case pending
}
