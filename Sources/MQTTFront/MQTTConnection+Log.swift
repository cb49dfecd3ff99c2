import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

extension MQTTConnection {
    /// Debug only: one line per packet, without payloads.
    func logPacket(_ inbound: MQTTInbound, received: Bool) {
        var metadata: Logger.Metadata = [
            "connection": "\(connection ?? 0)", "remote_address": "\(remoteAddress)",
        ]
        switch inbound {
        case .packet(let packet):
            metadata["packet_type"] = "\(packet.type)"
            if case .publish(let publish) = packet {
                metadata["topic"] = "\(publish.topicName)"
                metadata["qos"] = "\(publish.qos.rawValue)"
                metadata["payload_bytes"] = "\(publish.payload.readableBytes)"
            }
        case .failure(let error):
            metadata["error"] = "\(error)"
        }
        services.logger.debug(received ? "packet received" : "packet sent", metadata: metadata)
    }
}
