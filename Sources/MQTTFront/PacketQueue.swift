import Broker
import MQTTCodec

typealias PacketQueue = LazyFIFO<BrokerWork>

/// What waits for the broker, in the order the client sent it.
enum BrokerWork {
    /// A client packet for the broker session.
    case packet(MQTTPacket)
    /// An answer the front gave itself (a PUBLISH refused by a limit): written once everything
    /// before it is answered, so that acknowledgements keep the order of the PUBLISHes (MQTT-4.6.0-2).
    case answer(MQTTPacket)
}
