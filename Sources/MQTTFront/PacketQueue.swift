import MQTTCodec
import NIOCore

/// A FIFO of packets whose storage is allocated by the first `append` (a held connection
/// that never queues anything keeps none).
struct PacketQueue {
    private var buffer: CircularBuffer<MQTTPacket>?

    var count: Int { buffer?.count ?? 0 }
    var isEmpty: Bool { buffer?.isEmpty ?? true }

    mutating func append(_ packet: MQTTPacket) {
        if buffer == nil { buffer = CircularBuffer(initialCapacity: 4) }
        buffer!.append(packet)
    }

    mutating func popFirst() -> MQTTPacket? {
        buffer?.popFirst()
    }

    /// Empties the queue; its storage is kept for the next packets.
    mutating func removeAll() {
        buffer?.removeAll(keepingCapacity: true)
    }
}
