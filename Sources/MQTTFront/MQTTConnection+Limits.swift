import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

/// What a connection keeps for the limits few connections meet: its publish budget (only
/// when a publish rate is set) and its outbound Topic Aliases (only for a v5 client that
/// announced a Topic Alias Maximum). Out of line: most held connections need neither.
final class ConnectionLimiting {
    var throttle: PublishThrottle?
    /// Reads are paused for `throttle` and a resume is scheduled.
    var throttleHolds = false
    /// Packets read (in the same read as the one that spent the budget) while `throttleHolds`:
    /// handled in order once it refills. At most what one read of the transport brings.
    var held = CircularBuffer<MQTTInbound>()
    var aliases: OutboundTopicAliases?

    init(throttle: PublishThrottle?, aliases: OutboundTopicAliases?) {
        self.throttle = throttle
        self.aliases = aliases
    }
}

// The limits as the connection meets them (README "Limits"): counted in
// `custody_limit_exceeded_total{limit}`, logged at a bounded rate, enforced on every transport
// alike (this object is the same behind TCP, TLS and WebSocket).

extension MQTTConnection {
    /// A limit was exceeded: counted, and logged unless too many such lines were written lately
    /// (the next line written says how many were held back).
    func limitExceeded(_ limit: FrontLimit, why: String) {
        services.metrics?.limitExceeded(limit.rawValue)
        let (write, suppressed) = services.logThrottle.admit(limit.rawValue)
        guard write else { return }
        var metadata: Logger.Metadata = [
            "limit": "\(limit.rawValue)", "reason": "\(why)", "remote_address": "\(remoteAddress)",
        ]
        if let connection { metadata["connection"] = "\(connection)" }
        if let sessionName { metadata["session_name"] = "\(sessionName)" }
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        services.logger.notice("limit exceeded", metadata: metadata)
    }

    /// `limits.maxConnections`: counts this connection in, or refuses it (closed at once).
    func admit() -> Bool {
        guard services.admitConnection() else {
            perform(machine.tooManyConnections(maximum: tunables.maximumConnections))
            return false
        }
        return true
    }

    /// `limits.connectsPerSecondPerSession`: a first CONNECT's identity decision, turned into
    /// `connectRateExceeded` when its session name was CONNECTed too recently. Only CONNECTs
    /// the identity authority accepts spend from the budget.
    func applyConnectRate(_ connect: MQTTConnect, _ decision: IdentityDecision?) -> IdentityDecision? {
        guard let limiter = tunables.connectRate, (decision?.verdict ?? .authenticated) == .authenticated else {
            return decision
        }
        let name = decision?.authenticationName ?? AuthenticationName(unchecked: connect.userName ?? connect.clientIdentifier)
        guard !limiter.admit(name, SessionName(unchecked: connect.clientIdentifier)) else { return decision }
        return IdentityDecision(
            authenticationName: name, verdict: .connectRateExceeded,
            detail: "more than \(limiter.rate) CONNECT a second for this session name")
    }

    /// Made when the CONNACK goes out: the publish budget and the outbound aliases, if any.
    func startLimiting(_ identity: ConnectionStateMachine.Identity) {
        let throttle = PublishThrottle(
            messagesPerSecond: tunables.publishMessagesPerSecond, bytesPerSecond: tunables.publishBytesPerSecond,
            now: .now())
        let aliases = identity.outboundTopicAliasMaximum > 0
            ? OutboundTopicAliases(
                maximum: identity.outboundTopicAliasMaximum, clientMaximumPacketSize: identity.maximumPacketSize)
            : nil
        guard throttle != nil || aliases != nil else { return }
        limiting = ConnectionLimiting(throttle: throttle, aliases: aliases)
    }

    /// A packet read while the publish budget holds reads back: kept, in order, for later.
    func holdForThrottle(_ inbound: MQTTInbound) {
        guard let limiting else { return handle(inbound) }
        limiting.held.append(inbound)
        machine.touched(now: .now())
    }

    /// The budget refilled: the packets held back are handled, until it runs out again.
    func handleHeldPackets() {
        while let limiting, !limiting.throttleHolds, let next = limiting.held.popFirst() {
            handle(next)
        }
    }

    /// The transport closed: what was held back is handled now, budget or not.
    func releaseHeldPackets() {
        guard let limiting, !limiting.held.isEmpty else { return }
        limiting.throttleHolds = false
        limiting.throttle = nil
        handleHeldPackets()
    }

    /// An active connection's PUBLISH was read: charged to its budget; over it, reads pause
    /// until the budget has refilled (nothing is dropped or refused).
    func chargePublish(_ publish: MQTTPublish) {
        guard let limiting, limiting.throttle != nil, !limiting.throttleHolds else { return }
        let now = NIODeadline.now()
        limiting.throttle!.charge(bytes: publish.topicName.utf8.count + publish.payload.readableBytes, now: now)
        guard let (wait, limit) = limiting.throttle!.wait(at: now) else { return }
        limiting.throttleHolds = true
        limitExceeded(limit, why: "publishing faster than allowed: not read for \(wait.nanoseconds / 1_000_000) ms")
        scheduleThrottleEnd(after: wait)
    }

    private func scheduleThrottleEnd(after wait: TimeAmount) {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.scheduleTask(in: wait) {
            let connection = bound.value
            guard let limiting = connection.limiting, let throttle = limiting.throttle else { return }
            if let (more, _) = throttle.wait(at: .now()) {
                connection.scheduleThrottleEnd(after: more)
                return
            }
            limiting.throttleHolds = false
            connection.handleHeldPackets()
            connection.resumeReadsIfHeld()
        }
    }

    /// Reads paused by the publish budget.
    var throttleHoldsReads: Bool { limiting?.throttleHolds ?? false }

    /// A packet as it is to be written: a PUBLISH gets its outbound Topic Alias, if any.
    func outbound(_ packet: MQTTPacket) -> MQTTPacket {
        guard let limiting, limiting.aliases != nil, case .publish(let publish) = packet else { return packet }
        return .publish(limiting.aliases!.outbound(publish))
    }
}
