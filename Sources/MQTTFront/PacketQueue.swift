import Broker
import MQTTCodec

typealias PacketQueue = LazyFIFO<BrokerWork>
typealias AnswerQueue = LazyFIFO<AnswerSlot>

/// What waits for the broker, in the order the client sent it.
enum BrokerWork {
    /// A client packet for the broker session.
    case packet(MQTTPacket)
    /// An answer the front gave itself (a PUBLISH refused by a limit): written once everything
    /// before it is answered, so that acknowledgements keep the order of the PUBLISHes (MQTT-4.6.0-2).
    case answer(MQTTPacket)
}

/// An answer on its way to the client while earlier ones are not written yet: the answer to
/// a PUBLISH the broker decided and is making durable (`broker`, nil until it comes), or one
/// that is ready and waits behind those (`own`). Written in the order the packets came.
final class AnswerSlot {
    enum Content {
        case broker(Result<[MQTTPacket], any Error>?)
        case own([MQTTPacket])
    }

    var content: Content
    /// The broker decided its PUBLISH at once (`.decided`): the answer comes into this place.
    var wasDecided = false

    init(_ content: Content) { self.content = content }

    var isReady: Bool {
        if case .broker(nil) = content { return false }
        return true
    }
}
