import MQTTCodec

// What one packet may carry (README "Limits"): topic names (bytes, levels) and property sizes.
// A topic refused on a PUBLISH refuses that message (v5 QoS 1/2: PUBACK/PUBREC 0x90) or, where
// MQTT has no per-message answer (v5 QoS 0, every 3.1.1 PUBLISH), the connection; a property
// too large closes the connection (v5 DISCONNECT 0x95). The same limits hold for the will of a
// CONNECT, refused before the ledger is asked.

extension ConnectionStateMachine {
    /// Why `topic` is refused, if it is: longer than `maximumTopicBytes`, or of more levels than
    /// `maximumTopicLevels`. Bytes first: the level count then reads a bounded name.
    func topicViolation(_ topic: String) -> (FrontLimit, String)? {
        let bytes = topic.utf8.count
        if bytes > settings.maximumTopicBytes {
            return (.maxTopicBytes, "topic name of \(bytes) bytes, the maximum is \(settings.maximumTopicBytes)")
        }
        var levels = 1
        for byte in topic.utf8 where byte == UInt8(ascii: "/") { levels += 1 }
        if levels > settings.maximumTopicLevels {
            return (.maxTopicLevels, "topic name of \(levels) levels, the maximum is \(settings.maximumTopicLevels)")
        }
        return nil
    }

    /// Why `properties` are refused, if they are: User Properties above `maximumUserPropertyBytes`
    /// together, or a Response Topic, Correlation Data or Content Type above `maximumPropertyValueBytes`.
    func propertyViolation(_ properties: MQTTProperties) -> (FrontLimit, String)? {
        guard !properties.isEmpty else { return nil }
        var userBytes = 0
        for property in properties {
            let valueBytes: Int
            let name: String
            switch property {
            case .userProperty(let user):
                userBytes += user.name.utf8.count + user.value.utf8.count
                continue
            case .responseTopic(let topic): (name, valueBytes) = ("Response Topic", topic.utf8.count)
            case .contentType(let type): (name, valueBytes) = ("Content Type", type.utf8.count)
            case .correlationData(let data): (name, valueBytes) = ("Correlation Data", data.readableBytes)
            default: continue
            }
            if valueBytes > settings.maximumPropertyValueBytes {
                return (.maxPropertyValueBytes,
                    "\(name) of \(valueBytes) bytes, the maximum is \(settings.maximumPropertyValueBytes)")
            }
        }
        if userBytes > settings.maximumUserPropertyBytes {
            return (.maxUserPropertyBytes,
                "User Properties of \(userBytes) bytes, the maximum is \(settings.maximumUserPropertyBytes)")
        }
        return nil
    }

    /// The properties of a packet from a v5 client, checked against the limits.
    func propertyViolation(_ packet: MQTTPacket) -> (FrontLimit, String)? {
        switch packet {
        case .publish(let publish): propertyViolation(publish.properties)
        case .puback(let response), .pubrec(let response), .pubrel(let response), .pubcomp(let response):
            propertyViolation(response.properties)
        case .subscribe(let subscribe): propertyViolation(subscribe.properties)
        case .unsubscribe(let unsubscribe): propertyViolation(unsubscribe.properties)
        case .disconnect(let disconnect): propertyViolation(disconnect.properties)
        case .auth(let auth): propertyViolation(auth.properties)
        case .connect, .connack, .suback, .unsuback, .pingreq, .pingresp: nil
        }
    }

    /// Why a CONNECT is refused by a limit, and the v5 CONNACK code: its properties or its
    /// will's (0x95 Packet too large, as on any other packet), its will topic (0x90 Topic Name
    /// invalid, which MQTT 5 allows a CONNACK for a will topic the server does not accept).
    func connectViolation(_ connect: MQTTConnect) -> (FrontLimit, String, MQTTReasonCode)? {
        if connect.protocolVersion == .mqtt5 {
            if let (limit, why) = propertyViolation(connect.properties) { return (limit, why, .packetTooLarge) }
            if let will = connect.will, let (limit, why) = propertyViolation(will.properties) {
                return (limit, "will: \(why)", .packetTooLarge)
            }
        }
        if let will = connect.will, let (limit, why) = topicViolation(will.topic) {
            return (limit, "will \(why)", .topicNameInvalid)
        }
        return nil
    }

    /// A PUBLISH whose topic the limits refuse: v5 QoS 1/2 get PUBACK/PUBREC 0x90 and the
    /// message is dropped; v5 QoS 0 (nothing to answer on) gets DISCONNECT 0x90; 3.1.1 (no
    /// reason codes at all) loses the connection. Closed: `disconnected(clientError)`.
    mutating func refusePublish(_ publish: MQTTPublish, identity: Identity, limit: FrontLimit, why: String) -> Action {
        guard identity.protocolVersion == .mqtt5, let id = publish.packetIdentifier else {
            return closeForClientError(identity, code: .topicNameInvalid, why: why, limit: limit)
        }
        let response = MQTTPublishResponse(packetIdentifier: id, reasonCode: .topicNameInvalid)
        let answer: MQTTPacket = publish.qos == .exactlyOnce ? .pubrec(response) : .puback(response)
        return .refuseMessage(answer: answer, limit: limit, why: why)
    }

    /// The limit a decoding failure is, if it is one: a packet above the maximum packet size.
    static func limit(of error: MQTTDecodingError) -> FrontLimit? {
        if case .packetTooLarge = error.problem { return .maxPacketBytes }
        return nil
    }
}
