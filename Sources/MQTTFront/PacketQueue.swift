import Broker
import MQTTCodec

typealias PacketQueue = LazyFIFO<MQTTPacket>
