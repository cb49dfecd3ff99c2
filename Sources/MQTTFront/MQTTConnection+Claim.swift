import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

// The claim and its answer, in the order DESIGN.md R4 demands: the ledger decides, then a
// replaced connection hears 0x8E and is gone (detached, closed) before the new CONNACK is
// written, then the session attaches to the broker after its CONNACK, so that queued
// deliveries follow it.

extension MQTTConnection {
    func claim(_ request: ClaimRequest) {
        let eventLoop = self.eventLoop
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        services.ledger.claim(request) { result in
            eventLoop.execute { bound.value.claimCompleted(result) }
        }
    }

    func accept(_ acceptance: ConnectionStateMachine.Acceptance) {
        let grant = acceptance.grant
        // The metadata is made only when the lines are written (not at --log-level warning).
        if services.logger.logLevel <= .info {
            var metadata: Logger.Metadata = [
                "session_name": "\(acceptance.identity.sessionName)",
                "authentication_name": "\(acceptance.identity.authenticationName)", "connection": "\(grant.connection)",
                "session_present": "\(grant.sessionPresent)", "session_expiry_interval": "\(grant.expiryInterval)",
                "protocol_version": "\(acceptance.identity.protocolVersion.rawValue)", "remote_address": "\(remoteAddress)",
            ]
            if let replaced = grant.replacedConnection {
                metadata["replaced_connection"] = "\(replaced)"
                services.logger.info("session taken over", metadata: metadata)
            }
            services.logger.info("connect granted", metadata: metadata)
        }
        services.metrics?.connect(granted: true, reasonCode: 0)
        // R4: the old connection hears 0x8E and is gone (detached, closed) before the new CONNACK.
        if let replaced = grant.replacedConnection,
            let gone = services.registry.takeOver(replaced)
        {
            gone.hop(to: eventLoop).assumeIsolated().whenComplete { [self] _ in
                completeAcceptance(acceptance)
            }
            return
        }
        if let replaced = grant.replacedConnection {
            // Held through another front (the ledger socket): that front closes it.
            services.operations.takenOverElsewhere?(replaced, acceptance.identity.sessionName)
        }
        completeAcceptance(acceptance)
    }

    func completeAcceptance(_ acceptance: ConnectionStateMachine.Acceptance) {
        guard machine.isAccepting, let io else { return }
        let identity = acceptance.identity
        io.setMaximumPacketSize(identity.maximumPacketSize)
        io.write(acceptance.connack)
        startLimiting(identity)
        if let pubsub = services.pubsub {
            // Attached after the CONNACK is written, so that queued deliveries follow it.
            pubsubSession = pubsub.attachSession(
                name: identity.sessionName, persistent: acceptance.grant.expiryInterval > 0,
                sessionPresent: acceptance.grant.sessionPresent, protocolVersion: identity.protocolVersion,
                receiveMaximum: identity.receiveMaximum, maximumPacketSize: identity.maximumPacketSize,
                will: identity.will, expiryInterval: acceptance.grant.expiryInterval,
                readsServerTopics: services.operations.readsServerTopics(identity.authenticationName),
                sink: self)
            if let pubsubSession {
                pubsub.describePublisher(
                    pubsubSession, authenticationName: authenticationName ?? identity.sessionName.value,
                    sessionName: identity.sessionName.value, signInAttributes: signIn?.decision?.attributes ?? [:])
            }
        }
        let (pending, keepAlive) = machine.accepted(now: .now())
        // A kept session's subscriptions were allowed by the rules of their day.
        if acceptance.grant.sessionPresent, permissions != nil { revokeSubscriptions(access: nil) }
        io.flushWrites()
        if let keepAlive { scheduleKeepAlive(keepAlive) }
        for inbound in pending { process(inbound) }
    }

    func claimCompleted(_ result: Result<ClaimOutcome, LedgerError>) {
        perform(machine.claimCompleted(result))
    }
}
