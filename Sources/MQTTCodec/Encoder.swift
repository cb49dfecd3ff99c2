import NIOCore

/// Writes packets for one protocol version. Every packet type can be written (the broker
/// sends the server's half, tests and the benchmark client the client's). A packet is
/// measured and checked in full before the first byte is written, so a throw leaves the
/// buffer as it was.
public struct MQTTEncoder: Sendable {
    /// The version of every packet but CONNECT, which is written in its own `protocolVersion`.
    public var protocolVersion: MQTTProtocolVersion

    public init(protocolVersion: MQTTProtocolVersion) {
        self.protocolVersion = protocolVersion
    }

    /// The number of bytes `encode` would write, fixed header included: what the front
    /// compares with the client's Maximum Packet Size before sending.
    public func encodedSize(of packet: MQTTPacket) throws(MQTTEncodingError) -> Int {
        let body = try measure(packet).body
        return 1 + variableByteIntegerSize(body) + body
    }

    /// Appends the packet to `buffer` and returns the number of bytes written.
    @discardableResult
    public func encode(_ packet: MQTTPacket, into buffer: inout ByteBuffer) throws(MQTTEncodingError) -> Int {
        let sizes = try measure(packet)
        let total = 1 + variableByteIntegerSize(sizes.body) + sizes.body
        buffer.reserveCapacity(minimumWritableBytes: total)
        let version = protocolVersion
        var first = packet.type.rawValue << 4 | packet.type.requiredFlags
        if case .publish(let publish) = packet { first |= publish.flags }
        buffer.writeInteger(first)
        buffer.writeVariableByteInteger(sizes.body)
        switch packet {
        case .connect(let connect): connect.write(sizes, to: &buffer)
        case .connack(let connack): connack.write(sizes, version, to: &buffer)
        case .publish(let publish): publish.write(sizes, version, to: &buffer)
        case .puback(let response), .pubrec(let response), .pubrel(let response), .pubcomp(let response):
            response.write(sizes, version, to: &buffer)
        case .subscribe(let subscribe): subscribe.write(sizes, version, to: &buffer)
        case .suback(let suback): suback.write(sizes, version, to: &buffer)
        case .unsubscribe(let unsubscribe): unsubscribe.write(sizes, version, to: &buffer)
        case .unsuback(let unsuback): unsuback.write(sizes, version, to: &buffer)
        case .pingreq, .pingresp: break
        case .disconnect(let disconnect): if version.isV5 { disconnect.write(sizes, to: &buffer) }
        case .auth(let auth): auth.write(sizes, to: &buffer)
        }
        return total
    }

    private func measure(_ packet: MQTTPacket) throws(MQTTEncodingError) -> EncodingSizes {
        let version = protocolVersion
        let sizes: EncodingSizes
        switch packet {
        case .connect(let connect):
            sizes = try connect.measure()
        case .connack(let connack):
            try check(connack.reasonCode, ReasonCodes.connack)
            sizes = try connack.measure(version)
        case .publish(let publish):
            sizes = try publish.measure(version)
        case .puback(let response), .pubrec(let response):
            try check(response.reasonCode, ReasonCodes.pubackPubrec)
            sizes = try response.measure(version, packet.type)
        case .pubrel(let response), .pubcomp(let response):
            try check(response.reasonCode, ReasonCodes.pubrelPubcomp)
            sizes = try response.measure(version, packet.type)
        case .subscribe(let subscribe):
            sizes = try subscribe.measure(version)
        case .suback(let suback):
            for code in suback.reasonCodes { try check(code, ReasonCodes.suback) }
            sizes = try suback.measure(version)
        case .unsubscribe(let unsubscribe):
            sizes = try unsubscribe.measure(version)
        case .unsuback(let unsuback):
            for code in unsuback.reasonCodes { try check(code, ReasonCodes.unsuback) }
            sizes = try unsuback.measure(version)
        case .pingreq, .pingresp:
            sizes = EncodingSizes()
        case .disconnect(let disconnect):
            try check(disconnect.reasonCode, ReasonCodes.disconnect)
            sizes = try disconnect.measure(version)
        case .auth(let auth):
            guard version.isV5 else { throw MQTTEncodingError(.packetNotInVersion(.auth, version)) }
            try check(auth.reasonCode, ReasonCodes.auth)
            sizes = try auth.measure()
        }
        guard sizes.body <= maximumVariableByteInteger else { throw MQTTEncodingError(.packetTooLarge(sizes.body)) }
        return sizes
    }

    /// Only 5.0 writes reason codes other than CONNACK's and SUBACK's, which have their own
    /// 3.1.1 mappings; a peer would refuse a code its packet does not define.
    private func check(_ code: MQTTReasonCode, _ allowed: ReasonCodes) throws(MQTTEncodingError) {
        guard allowed.contains(code) else { throw MQTTEncodingError(.invalidReasonCode(code)) }
    }
}
