import Authorization
import CustodyModel
import LedgerWire
import Logging
import NIOCore
import SessionLedger

/// One peer on the ledger socket (a Mosquitto with the plugin): its requests go through the
/// one `SessionAuthority`, its answers come back once durable. It holds the connections the
/// ledger granted it; when the peer goes away, their ends are recorded (`connectionLost`),
/// so that nothing stays held off the ledger.
final class LedgerPeerHandler: ChannelInboundHandler {
    typealias InboundIn = Result<ByteBuffer, LedgerWireDecodingError>
    typealias OutboundOut = ByteBuffer

    private struct Held {
        var sessionName: SessionName
        var authenticationName: AuthenticationName
        /// Decided once at the claim; nil: everything allowed (authorization open).
        var permissions: ClientPermissions?
    }

    private let shared: LedgerServiceContext
    private let peerName: String
    private var held: [ConnectionNumber: Held] = [:]
    private var context: ChannelHandlerContext?
    private var closing = false
    private var bound: NIOLoopBound<LedgerPeerHandler>?

    init(shared: LedgerServiceContext, peerName: String) {
        self.shared = shared
        self.peerName = peerName
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.bound = bound
        shared.peers.add(bound, id: ObjectIdentifier(self))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Claims in flight keep their own reference; this one would keep the handler forever.
        bound = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        shared.logger.info("ledger peer connected", metadata: ["peer": "\(peerName)"])
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closing = true
        shared.peers.remove(id: ObjectIdentifier(self))
        let ends = releaseEverything(reason: .connectionLost)
        shared.logger.info("ledger peer closed", metadata: ["peer": "\(peerName)", "connections_released": "\(ends)"])
        self.context = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        let frame: LedgerWireFrame
        do {
            frame = try LedgerWireFrame.decode(body: unwrapInboundIn(data).get())
        } catch {
            refuse(error)
            return
        }
        switch frame.message {
        case .claim(let claim):
            self.claim(claim, requestID: frame.requestID)
        case .release(let release):
            self.release(release, requestID: frame.requestID)
        case .authorize(let request):
            authorize(request, requestID: frame.requestID)
        default:
            refuse(LedgerWireDecodingError(.unknownFrameType, "a peer may send claim, release and authorize, not \(frame.message.typeName)"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        shared.logger.notice("ledger peer failed", metadata: ["peer": "\(peerName)", "error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: - Requests

    private func claim(_ claim: WireClaim, requestID: UInt32) {
        let identity = LedgerClaims.identity(claim, authority: shared.authority.authority)
        let connection = shared.ledger.nextConnectionNumber()
        let request = LedgerClaims.request(claim, identity: identity, connection: connection)
        let permissions = LedgerClaims.permissions(shared.access.access, identity: identity, sessionName: claim.sessionName)
        guard let bound, let loop = context?.eventLoop else { return }
        shared.ledger.claim(request) { result in
            loop.execute { bound.value.claimed(request, result, identity: identity, permissions: permissions, requestID: requestID) }
        }
    }

    private func claimed(
        _ request: ClaimRequest, _ result: Result<ClaimOutcome, LedgerError>, identity: IdentityDecision,
        permissions: ClientPermissions?, requestID: UInt32
    ) {
        let answer = LedgerClaims.answer(result, identity: identity)
        log(request, answer, result: result, detail: identity.detail)
        if case .success(.granted(let grant)) = result {
            guard !closing, let bound else {
                // The peer went away while the ledger decided: nobody holds the connection.
                shared.ledger.release(ReleaseRequest(
                    sessionName: request.sessionName, connection: grant.connection, reason: .connectionLost,
                    remoteAddress: request.remoteAddress)) { _ in }
                return
            }
            if let replaced = grant.replacedConnection { shared.takeOver(replaced, session: request.sessionName) }
            held[grant.connection] = Held(
                sessionName: request.sessionName, authenticationName: request.authenticationName, permissions: permissions)
            shared.peers.hold(grant.connection, by: bound)
        }
        send(LedgerWireFrame(requestID: requestID, message: .claimAnswer(answer)))
    }

    private func release(_ release: WireRelease, requestID: UInt32) {
        guard let reason = DisconnectReason(rawValue: release.reason) else {
            refuse(LedgerWireDecodingError(.malformedFrame, "release reason \(release.reason) is not a ledger disconnect reason"))
            return
        }
        guard let entry = held.removeValue(forKey: release.connection) else {
            // Taken over, or never granted to this peer: nothing of this peer's to record.
            send(LedgerWireFrame(requestID: requestID, message: .releaseAnswer(WireReleaseAnswer(outcome: .nothingToRecord))))
            return
        }
        shared.peers.drop([release.connection])
        guard let bound, let loop = context?.eventLoop else { return }
        let request = ReleaseRequest(
            sessionName: entry.sessionName, connection: release.connection, reason: reason,
            newExpiryInterval: release.newExpiryInterval, remoteAddress: release.remoteAddress)
        shared.ledger.release(request) { result in
            let answer: WireReleaseAnswer = switch result {
            case .success(let event?): WireReleaseAnswer(outcome: .recorded, sequence: event.sequence)
            case .success(nil): WireReleaseAnswer(outcome: .nothingToRecord)
            case .failure: WireReleaseAnswer(outcome: .failed)
            }
            loop.execute { bound.value.send(LedgerWireFrame(requestID: requestID, message: .releaseAnswer(answer))) }
        }
    }

    private func authorize(_ request: WireAuthorize, requestID: UInt32) {
        var allowed = false
        if let entry = held[request.connection] {
            if let permissions = entry.permissions {
                let decision = request.action == .publish
                    ? permissions.mayPublish(request.topic) : permissions.maySubscribe(request.topic)
                allowed = decision.isAllowed
                if !allowed, shared.logger.logLevel <= .info {
                    shared.logger.info("\(request.action == .publish ? "publish" : "subscribe") denied", metadata: [
                        "session_name": "\(entry.sessionName)", "authentication_name": "\(entry.authenticationName)",
                        "connection": "\(request.connection)", "topic": "\(request.topic)", "reason": "\(decision.reason)",
                        "peer": "\(peerName)",
                    ])
                }
            } else {
                allowed = true
            }
        }
        send(LedgerWireFrame(requestID: requestID, message: .authorizeAnswer(allowed)))
    }

    // MARK: - From elsewhere

    /// R4: `connection` lost its session to a claim (here or on another front); the peer is told.
    func lostSession(_ connection: ConnectionNumber, session: SessionName) {
        guard held.removeValue(forKey: connection) != nil, !closing else { return }
        send(LedgerWireFrame(requestID: 0, message: .takenOver(connection: connection, sessionName: "\(session)")))
    }

    /// Custody stops: every connection of this peer is recorded as ended by the server, then
    /// the peer is closed (the plugin then refuses and disconnects its clients).
    func shutdown() -> EventLoopFuture<Void> {
        guard let context else { return shared.group.next().makeSucceededVoidFuture() }
        closing = true
        let promise = context.eventLoop.makePromise(of: Void.self)
        let requests = takeAll(reason: .serverInitiatedDisconnect)
        let channel = context.channel
        shared.ledger.releaseAll(requests) { _ in
            channel.close(promise: nil)
            promise.succeed()
        }
        return promise.futureResult
    }

    // MARK: - Helpers

    private func takeAll(reason: DisconnectReason) -> [ReleaseRequest] {
        let requests = held.map { connection, entry in
            ReleaseRequest(sessionName: entry.sessionName, connection: connection, reason: reason)
        }
        shared.peers.drop(held.keys)
        held = [:]
        return requests
    }

    private func releaseEverything(reason: DisconnectReason) -> Int {
        let requests = takeAll(reason: reason)
        guard !requests.isEmpty else { return 0 }
        let logger = shared.logger
        shared.ledger.releaseAll(requests) { result in
            if case .failure(let error) = result {
                logger.error("ledger peer's connections not recorded as ended", metadata: ["error": "\(error)"])
            }
        }
        return requests.count
    }

    private func refuse(_ error: LedgerWireDecodingError) {
        shared.logger.notice("ledger peer refused", metadata: ["peer": "\(peerName)", "reason": "\(error)"])
        send(LedgerWireFrame(requestID: 0, message: .error(error.code, error.detail)))
        closing = true
        context?.close(promise: nil)
    }

    private func send(_ frame: LedgerWireFrame) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(frame.encoded(allocator: context.channel.allocator)), promise: nil)
    }

    private func log(_ request: ClaimRequest, _ answer: WireClaimAnswer, result: Result<ClaimOutcome, LedgerError>, detail: String) {
        var metadata: Logger.Metadata = [
            "session_name": "\(request.sessionName)", "authentication_name": "\(request.authenticationName)",
            "protocol_version": "\(request.protocolVersion.rawValue)", "remote_address": "\(request.remoteAddress)",
            "peer": "\(peerName)",
        ]
        switch result {
        case .success(.granted(let grant)):
            guard shared.logger.logLevel <= .info else { return }
            metadata["connection"] = "\(grant.connection)"
            metadata["session_present"] = "\(grant.sessionPresent)"
            if let replaced = grant.replacedConnection { metadata["replaced_connection"] = "\(replaced)" }
            shared.logger.info("connect granted", metadata: metadata)
        case .success(.rejected(let reason, _)):
            metadata["reason"] = "\(reason)"
            metadata["reason_code"] = "0x\(String(answer.reasonCode, radix: 16))"
            if !detail.isEmpty { metadata["detail"] = "\(detail)" }
            shared.logger.info("connect rejected", metadata: metadata)
        case .failure(let error):
            metadata["error"] = "\(error)"
            shared.logger.error("connect refused: the ledger could not record it", metadata: metadata)
        }
    }
}


extension LedgerWireMessage {
    var typeName: String { "\(type)" }
}
