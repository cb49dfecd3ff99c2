import Authorization
import Broker
import MQTTCodec
import NIOCore
import SessionLedger

/// What the front needs from the pub/sub core. The `Broker` conforms; without one the
/// front answers pub/sub packets minimally (acknowledges, delivers nothing).
public protocol PubSubEngine: Sendable {
    /// Once the CONNACK is written, from the connection's event loop, before any `handle`.
    /// `will`: the CONNECT's will message; `expiryInterval`: the session's, in force;
    /// `readsServerTopics`: the client may subscribe to `$custody/...`.
    func attachSession(
        name: SessionName, persistent: Bool, sessionPresent: Bool, protocolVersion: MQTTProtocolVersion,
        receiveMaximum: Int, maximumPacketSize: Int?, will: MQTTWill?, expiryInterval: UInt32,
        readsServerTopics: Bool, sink: any ConnectionSink
    ) -> any PubSubSession
    /// `publishWill`: false only after a client DISCONNECT with 0x00.
    func detachSession(_ session: any PubSubSession, publishWill: Bool)
    /// The session is over (expired, or ended with its connection): drop its state.
    func endSession(_ name: SessionName) async throws
    /// Whether the engine keeps state for `name` that no connection is attached to; false:
    /// `endSession` would do nothing.
    func hasDetachedSession(_ name: SessionName) -> Bool
    /// Right after `attachSession`: who holds the session (its authentication name and what
    /// sign-in said of it), for engines that tell others who published (routes).
    func describePublisher(
        _ session: any PubSubSession, authenticationName: String, sessionName: String,
        signInAttributes: [String: AttributeValue])
    /// Added to every v5 CONNACK that grants: what this engine does not do.
    var capabilities: MQTTProperties { get }
}

extension PubSubEngine {
    public func hasDetachedSession(_ name: SessionName) -> Bool { true }

    public func describePublisher(
        _ session: any PubSubSession, authenticationName: String, sessionName: String,
        signInAttributes: [String: AttributeValue]
    ) {}
}

/// How a packet handed to the pub/sub core is answered.
public enum PubSubAnswer: Sendable {
    /// Answered now, on the caller's thread.
    case now([MQTTPacket])
    /// Decided now (routed, queued); its answers come later (once durable), and the
    /// connection's next packet may be handed over before they do.
    case decided
    /// Decided and answered later; the next packet waits for that.
    case pending
}

extension PubSubSession {
    public func handle(
        _ packet: MQTTPacket, answerLater: @escaping @Sendable (Result<[MQTTPacket], any Error>) -> Void
    ) throws -> PubSubAnswer {
        Task {
            do {
                answerLater(.success(try await handle(packet)))
            } catch {
                answerLater(.failure(error))
            }
        }
        return .pending
    }
}

public protocol PubSubSession: AnyObject, Sendable {
    /// One client packet, in arrival order; returns the answers to send.
    func handle(_ packet: MQTTPacket) async throws -> [MQTTPacket]
    /// The same without a hop to another thread where none is needed (see `PubSubAnswer`);
    /// `answerLater` is called once, from another thread, unless the answer is `.now`. The
    /// default is always `.pending`, through `handle(_:)` in a task.
    func handle(
        _ packet: MQTTPacket, answerLater: @escaping @Sendable (Result<[MQTTPacket], any Error>) -> Void
    ) throws -> PubSubAnswer
    /// The filters the session subscribes to now, restored ones included.
    var subscriptionFilters: [String] { get }
}

/// Where the broker sends packets on its own (deliveries) to one connection: the
/// connection itself (`MQTTConnection`). Called from any thread, never blocks.
public protocol ConnectionSink: BrokerSink {}

/// The answers a front without a broker gives: acknowledge what needs acknowledging so that
/// clients proceed, refuse subscriptions (nothing would ever be delivered).
enum MinimalPubSub {
    static func answer(_ packet: MQTTPacket, version: MQTTProtocolVersion) -> [MQTTPacket] {
        switch packet {
        case .publish(let publish):
            guard let id = publish.packetIdentifier else { return [] }
            return publish.qos == .exactlyOnce
                ? [.pubrec(MQTTPublishResponse(packetIdentifier: id))]
                : [.puback(MQTTPublishResponse(packetIdentifier: id))]
        case .pubrel(let response):
            return [.pubcomp(MQTTPublishResponse(packetIdentifier: response.packetIdentifier))]
        case .subscribe(let subscribe):
            let code: MQTTReasonCode = version == .mqtt5 ? .implementationSpecificError : .unspecifiedError
            return [.suback(MQTTSubAck(
                packetIdentifier: subscribe.packetIdentifier,
                reasonCodes: Array(repeating: code, count: subscribe.subscriptions.count)))]
        case .unsubscribe(let unsubscribe):
            return [.unsuback(MQTTUnsubAck(
                packetIdentifier: unsubscribe.packetIdentifier,
                reasonCodes: version == .mqtt5
                    ? Array(repeating: .noSubscriptionExisted, count: unsubscribe.topicFilters.count) : []))]
        default:
            return []
        }
    }
}
/// An error from the pub/sub core that names the reason code to close with.
public protocol PubSubFailure: Error {
    var reasonCode: MQTTReasonCode { get }
}
