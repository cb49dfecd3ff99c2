import Authorization
import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

// What a client may do (DESIGN.md §5): its permissions are decided once at CONNECT, then
// every PUBLISH and SUBSCRIBE filter is checked on its way to the broker, in arrival order
// (the pump calls `screened`), so that answers given here never overtake the broker's.

extension MQTTConnection {
    /// The client's permissions, at CONNECT. A will topic it may not publish to refuses the
    /// CONNECT (CONNACK 0x87, 3.1.1: 5; ledger `rejected(clientAuthorizationError)`): the
    /// identity decision handed on says so. An identity refused already stays refused for that.
    func decideAccess(_ connect: MQTTConnect, authenticationName: String, identity: IdentityDecision?)
        -> IdentityDecision?
    {
        let access = services.access.access
        guard access.mode == .enforced else {
            permissions = nil
            return identity
        }
        let granted = access.permissions(
            authenticationName: authenticationName, sessionName: connect.clientIdentifier,
            attributes: signIn?.decision?.attributes ?? [:])
        permissions = Boxed(granted)
        guard let will = connect.will, (identity?.verdict ?? .authenticated) == .authenticated else { return identity }
        let decision = granted.mayPublish(will.topic)
        guard !decision.isAllowed else { return identity }
        denied("will", "will denied", target: ("topic", will.topic), decision)
        return IdentityDecision(
            authenticationName: identity?.authenticationName ?? AuthenticationName(unchecked: authenticationName),
            verdict: .authorizationDenied, detail: "the will topic '\(will.topic)' is not one it may publish to")
    }

    /// A packet on its way to the broker, checked: what the broker is to get (nil: it was
    /// answered here, or the connection closed for it).
    func screened(_ packet: MQTTPacket) -> MQTTPacket? {
        switch packet {
        case .publish(let publish):
            guard let permissions = permissions?.value else { return packet }
            let decision = permissions.mayPublish(publish.topicName)
            guard !decision.isAllowed else { return packet }
            denied("publish", "publish denied", target: ("topic", publish.topicName), decision)
            guard closingAfterBroker == nil else { return nil }
            guard machine.protocolVersion == .mqtt5 else {
                // 3.1.1 has no negative PUBACK: the connection ends (DESIGN.md §5).
                perform(machine.notAuthorized(why: "publish to '\(publish.topicName)' denied"))
                return nil
            }
            var answers: [MQTTPacket] = []
            if let id = publish.packetIdentifier {
                let response = MQTTPublishResponse(packetIdentifier: id, reasonCode: .notAuthorized)
                answers.append(publish.qos == .exactlyOnce ? .pubrec(response) : .puback(response))
            }
            machine.answered(answers)
            writeInOrder(answers)
            return nil
        case .subscribe(let subscribe):
            let screen = SubscribeScreen(
                subscribe, permissions: permissions?.value, limits: tunables.subscribeLimits,
                version: machine.protocolVersion ?? .mqtt3_1_1)
            if screen.refusals.isEmpty { return packet }
            for (filter, refusal) in screen.refusals {
                if case .notAuthorized(let decision) = refusal {
                    denied("subscribe", "subscribe denied", target: ("filter", filter), decision)
                } else if let limit = refusal.limit {
                    limitExceeded(limit, target: ("filter", filter), "\(refusal)")
                }
            }
            guard let forwarded = screen.forwarded else {
                if closingAfterBroker == nil { writeInOrder([.suback(screen.merged(with: nil))]) }
                return nil
            }
            subscribeScreen = Boxed(screen)
            return .subscribe(forwarded)
        default:
            return packet
        }
    }

    /// The broker's answers, with the SUBACK of a screened SUBSCRIBE completed and the
    /// UNSUBACK of a revocation (packet identifier 0, never a client's) left out.
    func completed(_ answers: [MQTTPacket]) -> [MQTTPacket] {
        let screen = subscribeScreen?.value
        subscribeScreen = nil
        guard screen != nil || answers.contains(where: { if case .unsuback(let a) = $0 { a.packetIdentifier == 0 } else { false } })
        else { return answers }
        return answers.compactMap { answer in
            switch answer {
            case .suback(let ack) where screen?.packetIdentifier == ack.packetIdentifier:
                return .suback(screen!.merged(with: ack))
            case .unsuback(let ack) where ack.packetIdentifier == 0:
                return nil
            default:
                return answer
            }
        }
    }

    /// The rules changed (a reload) or a kept session came back: decide the permissions again
    /// and unsubscribe the session from every filter no longer allowed. The connection stays
    /// up; the client is not told (MQTT has no server UNSUBSCRIBE). Returns how many went.
    @discardableResult
    func revokeSubscriptions(access: (any AccessControl)?) -> Int {
        guard machine.isActive, let sessionName, let name = authenticationName else { return 0 }
        if let access {
            permissions = access.mode == .enforced
                ? Boxed(access.permissions(
                    authenticationName: name, sessionName: "\(sessionName)", attributes: signIn?.decision?.attributes ?? [:]))
                : nil
        }
        guard let permissions = permissions?.value, let session = pubsubSession else { return 0 }
        let revoked = session.subscriptionFilters.filter { filter in
            !SubscribeScreen.isServerTopic(SubscribeScreen.unshared(filter)) && !permissions.maySubscribe(filter).isAllowed
        }.sorted()
        guard !revoked.isEmpty else { return 0 }
        services.metrics?.subscriptionsRevoked(by: revoked.count)
        services.logger.notice("subscriptions revoked", metadata: [
            "session_name": "\(sessionName)", "authentication_name": "\(name)", "connection": "\(connection ?? 0)",
            "filters": "\(revoked.joined(separator: " "))", "count": "\(revoked.count)",
        ])
        handToBroker(.unsubscribe(MQTTUnsubscribe(packetIdentifier: 0, topicFilters: revoked)))
        return revoked.count
    }

    /// Counted always; logged at most a few times per interval (a client may flood denials).
    private func denied(
        _ action: String, _ message: Logger.Message, target: (key: String, value: String), _ decision: AuthorizationDecision
    ) {
        services.metrics?.authorizationDenied(action)
        throttledNotice(message, target: target, reason: "\(decision.reason)")
    }

    func limitExceeded(_ limit: String, target: (key: String, value: String), _ why: String) {
        services.metrics?.limitExceeded(limit)
        throttledNotice("limit exceeded", target: target, reason: why, extra: ["limit": "\(limit)"])
    }

    private func throttledNotice(
        _ message: Logger.Message, target: (key: String, value: String), reason: String, extra: Logger.Metadata = [:]
    ) {
        guard services.logger.logLevel <= .notice else { return }
        let (write, suppressed) = services.logThrottle.admit(message.description)
        guard write else { return }
        var metadata: Logger.Metadata = [
            "session_name": "\(sessionName.map { "\($0)" } ?? "-")", "authentication_name": "\(authenticationName ?? "-")",
            "connection": "\(connection ?? 0)", "remote_address": "\(remoteAddress)", target.key: "\(target.value)",
            "reason": "\(reason)",
        ]
        metadata.merge(extra) { $1 }
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        services.logger.notice(message, metadata: metadata)
    }
}
