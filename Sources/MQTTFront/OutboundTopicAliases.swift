import MQTTCodec

/// Topic Aliases from the server to one v5 client that announced a Topic Alias Maximum in its
/// CONNECT (MQTT 5.0 section 3.3.2.3.4): the first PUBLISH of a topic carries the topic and a
/// new alias, later ones an empty topic and the alias.
///
/// First come, first served: aliases 1...`maximum` go to the first `maximum` topics sent and
/// keep them for the life of the connection; later topics are sent in full. No replacement, so
/// no alias ever means two topics on one connection, and a busy topic keeps its alias.
///
/// Retransmission stays decodable: a QoS 1/2 message is sent again only on a new connection
/// (MQTT-4.4.0-1), whose table starts empty, so the resend carries its topic. The table follows
/// the order packets are written in, which is the order the client reads them in.
///
/// `maximum` is the smaller of the client's and the server's `topicAliasMaximum`: a client
/// announcing 65,535 must not make the server keep 65,535 topic names for it.
struct OutboundTopicAliases: Sendable {
    let maximum: UInt16
    /// The client's Maximum Packet Size: a topic and an alias make a PUBLISH a few bytes longer,
    /// and one the client would not take must not set an alias it never hears of.
    let clientMaximumPacketSize: Int?
    private var aliases: [String: UInt16] = [:]

    init(maximum: UInt16, clientMaximumPacketSize: Int?) {
        self.maximum = maximum
        self.clientMaximumPacketSize = clientMaximumPacketSize
    }

    /// Aliases in use.
    var count: Int { aliases.count }

    /// `publish` as it is to be sent to the client.
    mutating func outbound(_ publish: MQTTPublish) -> MQTTPublish {
        guard !publish.topicName.isEmpty else { return publish }
        var sent = publish
        if let alias = aliases[publish.topicName] {
            sent.topicName = ""
            sent.properties.topicAlias = alias
            return sent
        }
        guard aliases.count < Int(maximum) else { return publish }
        let alias = UInt16(aliases.count + 1)
        sent.properties.topicAlias = alias
        if let limit = clientMaximumPacketSize {
            let size = (try? MQTTEncoder(protocolVersion: .mqtt5).encodedSize(of: .publish(sent))) ?? Int.max
            // Sent without an alias (or not at all, if even that is too large): nothing set.
            guard size <= limit else { return publish }
        }
        aliases[publish.topicName] = alias
        return sent
    }
}
