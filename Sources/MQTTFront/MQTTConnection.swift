import Authorization
import CustodyModel
#if os(Linux)
import EpollTransport
#endif
import Logging
import MQTTCodec
import NIOCore
import SessionLedger

/// Performs what the connection's state machine decides: talks to the ledger, the broker,
/// the registry and the transport (`ConnectionIO`). Lives on its connection's event loop;
/// answers from the ledger thread and from other connections hop there first.
///
/// Kept small (a held connection is mostly this object): what few connections need (TLS,
/// credentials under an identity authority, a close waiting for the broker) is boxed.
final class MQTTConnection: ConnectionSink, NIOScheduledCallbackHandler, @unchecked Sendable {
    let services: FrontServices
    /// The limits in force when this connection began (a reload does not change them).
    let tunables: FrontTunables
    /// Everything of this object but `eventLoop` is touched on that loop only.
    let eventLoop: any EventLoop
    /// The TLS layer under this connection, if any: the client certificate comes from it.
    let tls: Boxed<TLSTransport>?
    /// What the CONNECT presented, kept to decide again when the registry is reloaded.
    var credentials: Boxed<ConnectCredentials>?
    /// A sign-in decided elsewhere (a token, the webhook): the wait for it, then its decision,
    /// expiry and re-authentication. nil for the rest.
    var signIn: SignInState?
    var machine: ConnectionStateMachine
    /// Set by `attach`; dropped once the connection is finished (it refers back to this).
    var io: (any ConnectionIO)?
    var remoteAddress = ""
    /// The peer as `IP:port`, for log lines.
    var remoteAddressText: String { remoteAddress }
    var sessionName: SessionName?
    /// For the log only.
    var authenticationName: String?
    var pubsubSession: (any PubSubSession)?
    /// Allocated on first use: most connections never queue a packet, and 16 slots of
    /// `MQTTPacket` (NIO's default) were kilobytes per held connection.
    var brokerQueue = PacketQueue()
    /// Answers not written yet because an earlier one is still being made durable (a PUBLISH
    /// to a persistent session): written in order as they become ready. Empty for most.
    var answersOnTheWay = AnswerQueue()
    /// A client's DISCONNECT, or the loss of the connection, that came while the broker still
    /// had this connection's earlier packets: the connection ends once they are handled, so
    /// that a PUBLISH sent just before a DISCONNECT (mosquitto_pub's QoS 0) or just before the
    /// socket closed is not lost.
    var closingAfterBroker: Boxed<ConnectionStateMachine.Closing>?
    /// Since when the client has been above the outbound high-water mark; nil while it keeps up.
    var slowSince: Boxed<NIODeadline>?
    /// What the client may publish and subscribe to, decided at CONNECT; nil: authorization
    /// is open (or there is no CONNECT yet).
    var permissions: Boxed<ClientPermissions>?
    /// The checks of the SUBSCRIBE the broker has now, when some of its filters were refused
    /// here: its SUBACK is merged with them.
    var subscribeScreen: Boxed<SubscribeScreen>?
    /// The publish budget and outbound Topic Aliases, for the few connections that have either.
    var limiting: ConnectionLimiting?
    /// Made when someone waits for the end (`finishedFuture`); `isFinished` once it came.
    var finished: EventLoopPromise<Void>?
    /// The connect timeout until the CONNECT, then the keep-alive (never both).
    private var timer = ConnectionTimer.none
    var connection: ConnectionNumber?
    // The small ones last, together (a held connection is mostly this object).
    private var timerKind = TimerKind.connectTimeout
    private enum TimerKind { case connectTimeout, keepAlive }
    private enum ConnectionTimer {
        case none
        case scheduled(NIOScheduledCallback)
        #if os(Linux)
        /// The id of a timer on an `EpollEventLoop`.
        case onEpoll(EpollTimerID)
        #endif
    }
    /// `eventLoop` is an `EpollEventLoop` (plain TCP): its timers are called directly.
    let onEpollLoop: Bool
    /// `start` ran (from handlerAdded or channelActive, whichever saw the channel active).
    var isStarted = false
    var brokerBusy = false
    var isFinished = false
    /// The transport is closed (`inactive` ran).
    var isInactive = false
    var finishStarted = false
    /// Of the channel's close and the release's answer, how many `finish` still waits for.
    var finishWaiting: UInt8 = 0
    /// Counted in the front's open connections (`limits.maxConnections`) and in
    /// `custody_mqtt_connections_open`, until `inactive`.
    var countedOpen = false

    static let brokerQueueLimit = 64
    /// Reads pause while this many answers are on their way (QoS 0 PUBLISHes to persistent
    /// sessions have one each, without counting against the Receive Maximum).
    static let answersOnTheWayLimit = 1024

    init(services: FrontServices, eventLoop: any EventLoop, tls: TLSTransport? = nil) {
        self.services = services
        self.tunables = services.tunables
        self.eventLoop = eventLoop
        #if os(Linux)
        self.onEpollLoop = eventLoop is EpollEventLoop
        #else
        self.onEpollLoop = false
        #endif
        self.tls = tls.map(Boxed.init)
        self.machine = ConnectionStateMachine(sharedSettings: tunables.machineSettings)
    }

    // MARK: - Transport events

    func attach(_ io: any ConnectionIO) {
        self.io = io
    }

    func transportRemoved() {
        cancelTimer()
    }

    func cancelTimer() {
        switch timer {
        case .none: return
        case .scheduled(let callback): callback.cancel()
        #if os(Linux)
        case .onEpoll(let id): epollLoop.cancelTimer(id)
        #endif
        }
        timer = .none
    }

    /// Sets `timer` to fire `handleScheduledCallback` at `deadline` (the connection is its own
    /// handler: no object per timer). On an `EpollEventLoop` without a generic call or a cast.
    private func setTimer(_ kind: TimerKind, at deadline: NIODeadline) {
        timerKind = kind
        #if os(Linux)
        if onEpollLoop {
            timer = .onEpoll(epollLoop.scheduleTimer(self, at: deadline))
            return
        }
        #endif
        if let callback = try? eventLoop.scheduleCallback(at: deadline, handler: self) {
            timer = .scheduled(callback)
        }
    }

    #if os(Linux)
    /// The loop, known to be an `EpollEventLoop` when `onEpollLoop`.
    private var epollLoop: EpollEventLoop { unsafeDowncast(eventLoop as AnyObject, to: EpollEventLoop.self) }
    #endif

    /// Succeeds once the connection is closed, detached from the broker and its end recorded.
    func finishedFuture() -> EventLoopFuture<Void> {
        if isFinished { return eventLoop.makeSucceededVoidFuture() }
        if finished == nil { finished = eventLoop.makePromise(of: Void.self) }
        return finished!.futureResult
    }

    /// The connection is open. `remoteAddress`: the peer as `IP:port`.
    func start(remoteAddress: String?) {
        guard !isStarted else { return }
        isStarted = true
        if let remoteAddress { self.remoteAddress = remoteAddress }
        guard admit() else { return }
        countedOpen = true
        services.metrics?.connectionsOpen.increment()
        setTimer(.connectTimeout, at: .now() + tunables.connectTimeout)
        services.logger.debug("connection accepted", metadata: ["remote_address": "\(self.remoteAddress)"])
    }

    /// The connection is closed (by either side).
    func inactive() {
        // A finish under way was waiting for this close; one started from here on knows.
        let finishWasWaiting = finishStarted && !isInactive
        isInactive = true
        defer { if finishWasWaiting { finishStep() } }
        if countedOpen {
            countedOpen = false
            services.connectionClosed()
            services.metrics?.connectionsOpen.decrement()
        }
        cancelTimer()
        // What the client sent before it went is not lost, budget or not (as `closingAfterBroker`).
        releaseHeldPackets()
        perform(machine.channelInactive())
        // Gone while its sign-in was being decided: nothing was claimed, nothing to record.
        if connection == nil || signIn?.asking == true { finish(releasing: false) }
    }

    /// The transport failed (a reset, a TLS error); it closes next.
    func failed(_ error: any Error) {
        if tls != nil, connection == nil {
            // On TLS before any CONNECT: mostly a failed handshake (an untrusted certificate).
            services.logger.notice("TLS connection closed", metadata: ["remote_address": "\(remoteAddress)", "error": "\(error)"])
        } else {
            services.logger.debug("connection error", metadata: ["remote_address": "\(remoteAddress)", "error": "\(error)"])
        }
    }

    /// Whether more bytes may be read now; when not, the transport waits for `resumeReading`.
    var mayRead: Bool {
        signIn?.asking != true && !machine.pendingIsFull && brokerQueue.count < Self.brokerQueueLimit && !throttleHoldsReads
            && answersOnTheWay.count < Self.answersOnTheWayLimit
    }

    func resumeReadsIfHeld() {
        if mayRead { io?.resumeReading() }
    }

    // MARK: - Inputs from elsewhere (on this event loop)

    func takenOver(reason: MQTTReasonCode = .sessionTakenOver) {
        perform(machine.takenOver(reason: reason))
    }

    func shutdown() {
        perform(machine.shutdown())
    }

    func sessionOverflowed() {
        perform(machine.sessionOverflowed())
    }

    // MARK: - Doing what the machine says

    func process(_ inbound: MQTTInbound) {
        if let signIn, signIn.asking {
            // MQTT-3.1.4-6 still holds: what follows the CONNECT waits for its decision.
            signIn.held.append(inbound)
            return
        }
        if let limiting, limiting.throttleHolds || !limiting.held.isEmpty {
            return holdForThrottle(inbound)
        }
        handle(inbound)
    }

    /// `process` once nothing holds the packet back.
    func handle(_ inbound: MQTTInbound) {
        var number: ConnectionNumber = 0
        var decision: IdentityDecision?
        if machine.needsConnectionNumber(for: inbound) {
            number = services.ledger.nextConnectionNumber()
            connection = number
            services.registry.register(number, self)
            // Decided after registering: a registry reload either finds this connection (and
            // decides again, on this loop, after this) or replaced the authority before this read it.
            if case .packet(.connect(let connect)) = inbound {
                sessionName = SessionName(unchecked: connect.clientIdentifier)
                guard case .decided(let identity) = decideIdentity(connect) else {
                    // Asked elsewhere: `signedIn` goes on from here when the answer comes.
                    if services.logger.logLevel <= .debug { logPacket(inbound, received: true) }
                    return
                }
                decision = connectDecided(connect, identity)
                if decision?.verdict == .authenticated { scheduleExpiry(identity?.expiration) }
            }
        } else if limiting != nil, case .packet(.publish(let publish)) = inbound, machine.isActive {
            chargePublish(publish)
        }
        if services.logger.logLevel <= .debug { logPacket(inbound, received: true) }
        perform(machine.received(inbound, connection: number, remoteAddress: remoteAddress, identity: decision, now: .now()))
    }

    /// The identity of a first CONNECT is known: the connect rate and authorization have
    /// their say on it too.
    func connectDecided(_ connect: MQTTConnect, _ identity: IdentityDecision?) -> IdentityDecision? {
        let decision = applyConnectRate(connect, identity)
        let name = decision?.authenticationName.value ?? connect.userName ?? connect.clientIdentifier
        authenticationName = name
        return decideAccess(connect, authenticationName: name, identity: decision)
    }

    func perform(_ action: ConnectionStateMachine.Action) {
        if let version = machine.protocolVersion { io?.setProtocolVersion(version) }
        switch action {
        case .none:
            break
        case .send(let packets):
            write(packets)
        case .claim(let request):
            // Cancelled for good: nothing of it is kept for the life of the connection.
            cancelTimer()
            claim(request)
        case .toBroker(let packet):
            handToBroker(packet)
        case .accept(let acceptance):
            accept(acceptance)
        case .reject(let connack, let why):
            reject(connack, why: why, limit: nil)
        case .refuse(let connack, let limit, let why):
            reject(connack, why: why, limit: limit)
        case .refuseMessage(let answer, let limit, let why):
            limitExceeded(limit, why: why)
            answerInOrder(answer)
        case .close(let closing):
            if let limit = closing.limit { limitExceeded(limit, why: closing.why) }
            if closing.release?.reason == .clientInitiatedDisconnect || closing.channelGone,
                brokerBusy || !brokerQueue.isEmpty || !answersOnTheWay.isEmpty
            {
                closingAfterBroker = Boxed(closing)
            } else {
                end(closing)
            }
        case .abandon(let grant, let closing):
            if let replaced = grant.replacedConnection { _ = services.registry.takeOver(replaced) }
            end(closing)
        case .scheduleKeepAlive(let deadline):
            scheduleKeepAlive(deadline)
        case .reauthenticate(let method, let data):
            reauthenticate(method: method, data: data)
        }
        resumeReadsIfHeld()
    }

    /// A refused CONNECT (or a connection refused before one): the CONNACK, if any, then the
    /// close. Refused by a limit, it is counted and logged as that limit, at a bounded rate.
    private func reject(_ connack: MQTTPacket?, why: String, limit: FrontLimit?) {
        var code: MQTTReasonCode?
        if case .connack(let answer)? = connack { code = answer.reasonCode }
        if let limit {
            limitExceeded(limit, why: why)
        } else {
            var metadata: Logger.Metadata = ["remote_address": "\(remoteAddress)", "reason": "\(why)"]
            if let code { metadata["reason_code"] = "\(code.hexCode)" }
            if let connection, let sessionName {
                metadata["session_name"] = "\(sessionName)"
                metadata["authentication_name"] = "\(authenticationName ?? "-")"
                metadata["connection"] = "\(connection)"
                services.logger.info("connect rejected", metadata: metadata)
            } else {
                services.logger.notice("connection closed", metadata: metadata)
            }
        }
        // A CONNECT refused (not a connection that never sent one, or timed out first).
        if connection != nil || code != nil { services.metrics?.connect(granted: false, reasonCode: code?.rawValue) }
        close(sending: connack.map { [$0] } ?? [])
        finish(releasing: false)
    }

    func scheduleKeepAlive(_ deadline: NIODeadline) {
        setTimer(.keepAlive, at: deadline)
    }

    /// `timer` went off (on this loop). The connection is its own callback handler: no
    /// object per timer.
    func handleScheduledCallback(eventLoop: some EventLoop) {
        switch timerKind {
        case .connectTimeout: perform(machine.connectTimeoutFired())
        case .keepAlive:
            // A client whose reads the publish budget holds back is not idle: we do not read it.
            if throttleHoldsReads { machine.touched(now: .now()) }
            perform(machine.keepAliveTimerFired(now: .now()))
        }
    }

    func write(_ packets: [MQTTPacket]) {
        guard let io, !packets.isEmpty else { return }
        if limiting == nil {
            for packet in packets { io.write(packet) }
        } else {
            for packet in packets { io.write(outbound(packet)) }
        }
        io.flushWrites()
    }

    /// Sends what is left to say, then closes once it is written.
    func close(sending packets: [MQTTPacket]) {
        io?.close(sending: packets)
    }

    func end(_ closing: ConnectionStateMachine.Closing) {
        cancelTimer()
        let name = closing.release?.sessionName ?? sessionName
        // A client that broke the protocol is worth a warning; the rest is the normal course of things.
        let level: Logger.Level = closing.release?.reason == .clientError ? .warning : .info
        if services.logger.logLevel <= level {
            var metadata: Logger.Metadata = [
                "session_name": "\(name.map { "\($0)" } ?? "-")", "authentication_name": "\(authenticationName ?? "-")",
                "connection": "\(connection ?? 0)", "remote_address": "\(remoteAddress)", "reason": "\(closing.why)",
            ]
            if let reason = closing.release?.reason { metadata["disconnect_reason"] = "\(reason)" }
            services.logger.log(level: level, "disconnected", metadata: metadata)
        }
        detach(publishWill: closing.publishWill)
        guard let request = closing.release else {
            if !closing.channelGone { close(sending: closing.packets) }
            finish(releasing: false)
            return
        }
        // The release is queued before the socket closes: a client that reconnects as soon
        // as it sees the close finds its old session released (the writer decides in order),
        // instead of counted against its quota (R3) a moment longer.
        let services = self.services
        defer { if !closing.channelGone { close(sending: closing.packets) } }
        finish(releasing: true)
        services.release(request) { [self] result in
            switch result {
            case .success(let event?):
                // Interval 0: the session ended with its connection.
                if event.expiryInterval == 0 { services.sessionEnded(request.sessionName) }
            case .success(nil):
                break
            case .failure(let error):
                services.logger.error("ledger release failed", metadata: [
                    "connection": "\(request.connection)", "session_name": "\(request.sessionName)", "error": "\(error)",
                ])
            }
            eventLoop.execute { self.finishStep() }
        }
    }

    func detach(publishWill: Bool) {
        brokerQueue.removeAll()
        answersOnTheWay.removeAll()
        guard let session = pubsubSession else { return }
        pubsubSession = nil
        services.pubsub?.detachSession(session, publishWill: publishWill)
    }

    /// Completes `finished` once the transport is closed (`inactive`) and, when `releasing`,
    /// the ledger has answered the release: two counts, no futures.
    func finish(releasing: Bool) {
        guard !finishStarted, io != nil else { return }
        finishStarted = true
        signIn?.end()
        finishWaiting = (isInactive ? 0 : 1) + (releasing ? 1 : 0)
        if finishWaiting == 0 { finishDone() }
    }

    func finishStep() {
        finishWaiting -= 1
        if finishWaiting == 0 { finishDone() }
    }

    func finishDone() {
        if let connection { services.registry.unregister(connection) }
        // The transport refers to this connection: let both go.
        io = nil
        isFinished = true
        finished?.succeed()
    }
}
