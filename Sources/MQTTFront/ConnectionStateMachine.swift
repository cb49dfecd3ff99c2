import CustodyModel
import MQTTCodec
import NIOCore
import SessionLedger

/// What the decoder hands the connection: a packet, or the reason the bytes were not one.
public enum MQTTInbound: Sendable, Equatable {
    case packet(MQTTPacket)
    case failure(MQTTDecodingError)
}

/// The life of one MQTT connection, as a value: every input returns what to do, and nothing
/// here touches a socket, a clock or the ledger. The channel handler performs the actions.
///
///     awaitingConnect ──CONNECT──▶ connecting ──granted──▶ accepting ──accepted()──▶ active
///            │                        │  rejected / R8            │                    │
///            ▼                        ▼                           ▼                    ▼
///         closing ◀────────────────────────────────────────────────────────────────────┘
///
/// `connecting` waits for the ledger (the claim is durable before any answer); `accepting`
/// waits for a replaced connection to be gone and the broker to attach, then the CONNACK goes
/// out. Packets that arrive meanwhile wait in `pending` (MQTT-3.1.4-6: nothing after CONNECT
/// is processed before the CONNACK).
public struct ConnectionStateMachine: Sendable {
    /// Who this connection is, from its CONNECT.
    public struct Identity: Sendable {
        public var sessionName: SessionName
        public var authenticationName: AuthenticationName
        public var connection: ConnectionNumber
        public var protocolVersion: MQTTProtocolVersion
        /// The Session Expiry Interval the CONNECT asked for (v3.1.1: 0 or UInt32.max).
        public var requestedExpiry: UInt32
        /// Seconds; 0 turns keep-alive off. The one in force: the server's when it sent one.
        public var keepAlive: UInt16
        /// v5 Server Keep Alive for the CONNACK: the client asked for more than the maximum (or 0).
        public var serverKeepAlive: UInt16? = nil
        /// v5 Receive Maximum of the client (how many QoS > 0 messages it takes at once).
        public var receiveMaximum: Int
        /// v5 Maximum Packet Size of the client, if it set one.
        public var maximumPacketSize: Int?
        /// Topic Aliases the server may use towards the client: the smaller of the client's
        /// Topic Alias Maximum and the server's own (0: none; see `OutboundTopicAliases`).
        public var outboundTopicAliasMaximum: UInt16 = 0
        public var remoteAddress: String
        /// The CONNECT's authentication method (MQTT 5 enhanced authentication): one a token
        /// or the webhook took is named again in the CONNACK and in AUTH; any other is refused (0x8C).
        public var authenticationMethod: String? {
            get { rare?.value.authenticationMethod }
            set { updateRare { $0.authenticationMethod = newValue } }
        }
        /// The CONNECT's will message, for the broker.
        public var will: MQTTWill? {
            get { rare?.value.will }
            set { updateRare { $0.will = newValue } }
        }
        /// The identity authority's refusal (R7): the code to answer with and why, for the log.
        public var identityRefusal: (code: MQTTReasonCode, detail: String)? {
            get { rare?.value.identityRefusal }
            set { updateRare { $0.identityRefusal = newValue } }
        }

        /// What few CONNECTs carry, out of line: every held connection keeps an Identity.
        private struct Rare: Sendable {
            var authenticationMethod: String?
            var will: MQTTWill?
            var identityRefusal: (code: MQTTReasonCode, detail: String)?
        }
        private var rare: Boxed<Rare>?

        private mutating func updateRare(_ change: (inout Rare) -> Void) {
            var value = rare?.value ?? Rare()
            change(&value)
            let empty = value.authenticationMethod == nil && value.will == nil && value.identityRefusal == nil
            rare = empty ? nil : Boxed(value)
        }

        public init(
            sessionName: SessionName, authenticationName: AuthenticationName, connection: ConnectionNumber,
            protocolVersion: MQTTProtocolVersion, requestedExpiry: UInt32, keepAlive: UInt16,
            serverKeepAlive: UInt16? = nil, receiveMaximum: Int, maximumPacketSize: Int?, remoteAddress: String,
            authenticationMethod: String? = nil, will: MQTTWill? = nil,
            identityRefusal: (code: MQTTReasonCode, detail: String)? = nil
        ) {
            self.sessionName = sessionName
            self.authenticationName = authenticationName
            self.connection = connection
            self.protocolVersion = protocolVersion
            self.requestedExpiry = requestedExpiry
            self.keepAlive = keepAlive
            self.serverKeepAlive = serverKeepAlive
            self.receiveMaximum = receiveMaximum
            self.maximumPacketSize = maximumPacketSize
            self.remoteAddress = remoteAddress
            if authenticationMethod != nil || will != nil || identityRefusal != nil {
                rare = Boxed(Rare(authenticationMethod: authenticationMethod, will: will, identityRefusal: identityRefusal))
            }
        }
    }

    /// Why a connection that is not yet active must not become so when its claim comes back.
    public enum Abandonment: Sendable, Equatable {
        /// The channel went away; record the end with this reason.
        case lost(DisconnectReason)
        /// A newer connection of the same identity took the session over.
        case takenOver
        /// The broker is stopping: close, and record the end as server-initiated.
        case shutdown
        /// The identity authority no longer accepts the client (registry reloaded).
        case revoked(String)
        /// The session was ended by the ledger (its queue overflowed), end recorded already.
        case sessionOverflowed
    }

    enum State: Sendable {
        case awaitingConnect
        case connecting(Identity, pending: [MQTTInbound], abandoned: Abandonment?)
        case accepting(Identity, SessionGrant, pending: [MQTTInbound])
        case active(Identity, SessionGrant, lastActivity: NIODeadline)
        /// The version answers are encoded in, when known.
        case closing(MQTTProtocolVersion?)
    }

    /// A CONNACK success plus what the handler needs to attach the session.
    public struct Acceptance: Sendable {
        public var identity: Identity
        public var grant: SessionGrant
        public var connack: MQTTPacket
    }

    /// End the connection: send `packets` (may be empty), close, and record `release` in the ledger.
    public struct Closing: Sendable {
        public var packets: [MQTTPacket]
        /// nil when there is nothing to record (never granted, or taken over).
        public var release: ReleaseRequest?
        /// Why, for the log: a reason name or the decoder's description.
        public var why: String
        /// True when the channel is already gone: nothing can be sent.
        public var channelGone: Bool
        /// False only after a DISCONNECT with 0x00 (MQTT-3.1.2-10: the will is discarded).
        public var publishWill: Bool = true
        /// The limit the client exceeded, if that is why: counted and logged as that limit.
        public var limit: FrontLimit? = nil
    }

    public enum Action: Sendable {
        case none
        /// Answers on an active connection.
        case send([MQTTPacket])
        /// Ask the ledger; come back with `claimCompleted`.
        case claim(ClaimRequest)
        /// A pub/sub packet for the broker session, in arrival order.
        case toBroker(MQTTPacket)
        /// Granted: end `grant.replacedConnection` if any, attach, send the CONNACK, then call `accepted(now:)`.
        case accept(Acceptance)
        /// Refused CONNECT: send this CONNACK (if any) and close; the ledger recorded the rejection.
        case reject(connack: MQTTPacket?, why: String)
        /// A CONNECT (or a connection before it) refused by `limit`: as `reject`, but counted
        /// and logged as that limit, at a bounded rate (a client can cause these at will).
        case refuse(connack: MQTTPacket?, limit: FrontLimit, why: String)
        /// A PUBLISH refused by `limit` while the connection stays: send `answer` (PUBACK or
        /// PUBREC with a failure code) after the answers to what the client sent before it
        /// (MQTT-4.6.0-2: acknowledgements in the order of the PUBLISHes); count and log the limit.
        case refuseMessage(answer: MQTTPacket, limit: FrontLimit, why: String)
        case close(Closing)
        /// Granted, but the connection is already gone or taken over: end
        /// `grant.replacedConnection` if any, then perform `closing`.
        case abandon(SessionGrant, Closing)
        /// Check keep-alive again at this time.
        case scheduleKeepAlive(NIODeadline)
        /// AUTH 0x19 with new Authentication Data (`method` as at CONNECT): decide again, then
        /// answer with `reauthenticated` or end with `revoked`.
        case reauthenticate(method: String, data: [UInt8])
    }

    public struct Settings: Sendable {
        /// Appended to every v5 CONNACK that grants: what the broker does and does not do.
        public var capabilities: MQTTProperties { didSet { refreshGrantProperties() } }
        /// Most pending packets kept while the claim is in flight; beyond, reads stop.
        public var pendingLimit: Int
        /// v5 Topic Alias Maximum: aliases 1...this are accepted from clients (0: none).
        public var topicAliasMaximum: UInt16 { didSet { refreshGrantProperties() } }
        /// v5 Receive Maximum: QoS 1 and 2 PUBLISHes a client may have unacknowledged (65535: no limit told).
        public var receiveMaximum: UInt16 { didSet { refreshGrantProperties() } }
        /// What every granting v5 CONNACK says of this server (Receive Maximum, Topic Alias
        /// Maximum, capabilities), made once: most CONNACKs say nothing else.
        private(set) var grantProperties = MQTTProperties()

        private mutating func refreshGrantProperties() {
            var properties = MQTTProperties()
            // Absent means 65535 and 0 (section 3.2.2.3.3, 3.2.2.3.8).
            if receiveMaximum < 65_535 { properties.append(.receiveMaximum(receiveMaximum)) }
            if topicAliasMaximum > 0 { properties.append(.topicAliasMaximum(topicAliasMaximum)) }
            properties.list.append(contentsOf: capabilities.list)
            grantProperties = properties
        }
        /// Longest keep-alive a client may use, in seconds; nil: whatever the client asks.
        /// v5 clients asking more (or 0) are told this one (Server Keep Alive); v3.1.1 clients,
        /// who cannot be told, are refused (return code 2, as mosquitto's max_keepalive does).
        public var maximumKeepAlive: UInt16?
        /// Most QoS 1/2 messages sent to one client and not yet acknowledged, whatever its
        /// Receive Maximum (a v5 client that names none would allow 65,535, and hold them all
        /// in the broker's memory); the rest wait in its session queue.
        public var maximumOutboundInflight: Int
        /// Longest topic name, in UTF-8 bytes (`limits.maxTopicBytes`), of a PUBLISH or a will;
        /// the SUBSCRIBE screening holds filters to the same.
        public var maximumTopicBytes: Int
        /// Most levels of a topic name (`limits.maxTopicLevels`): one more than its `/`s.
        public var maximumTopicLevels: Int
        /// Most bytes of User Properties (names and values, UTF-8) in one packet
        /// (`limits.maxUserPropertyBytes`).
        public var maximumUserPropertyBytes: Int
        /// Longest Response Topic, Correlation Data or Content Type (`limits.maxPropertyValueBytes`).
        public var maximumPropertyValueBytes: Int

        public init(
            capabilities: MQTTProperties = [], pendingLimit: Int = 256, topicAliasMaximum: UInt16 = 0,
            receiveMaximum: UInt16 = 65_535, maximumKeepAlive: UInt16? = nil, maximumOutboundInflight: Int = 100,
            maximumTopicBytes: Int = 256, maximumTopicLevels: Int = 15, maximumUserPropertyBytes: Int = 32 << 10,
            maximumPropertyValueBytes: Int = 256
        ) {
            self.maximumTopicBytes = max(1, maximumTopicBytes)
            self.maximumTopicLevels = max(1, maximumTopicLevels)
            self.maximumUserPropertyBytes = max(0, maximumUserPropertyBytes)
            self.maximumPropertyValueBytes = max(0, maximumPropertyValueBytes)
            self.maximumOutboundInflight = max(1, maximumOutboundInflight)
            self.capabilities = capabilities
            self.pendingLimit = pendingLimit
            self.topicAliasMaximum = topicAliasMaximum
            self.receiveMaximum = max(1, receiveMaximum)
            self.maximumKeepAlive = maximumKeepAlive.map { max(1, $0) }
            refreshGrantProperties()
        }
    }

    var state: State = .awaitingConnect
    /// Shared by the connections of a front (one pointer each).
    private let sharedSettings: Boxed<Settings>
    var settings: Settings { sharedSettings.value }
    /// The client's topic aliases (v5, this connection only: MQTT-3.3.2-7).
    var inboundAliases: [UInt16: String] = [:]
    /// Packet identifiers of the client's QoS 1 and 2 PUBLISHes not yet answered with PUBACK,
    /// PUBCOMP or a failing PUBREC: its use of our Receive Maximum.
    var inboundInFlight: Set<UInt16> = []

    public init(settings: Settings = Settings()) {
        self.sharedSettings = Boxed(settings)
    }

    init(sharedSettings: Boxed<Settings>) {
        self.sharedSettings = sharedSettings
    }

    /// The version to encode in: the CONNECT's, once there is one. A CONNECT refused before
    /// its version was known is answered in 3.1.1's format (MQTT-3.1.2-2 for unknown levels).
    public var protocolVersion: MQTTProtocolVersion? {
        switch state {
        case .awaitingConnect: nil
        case .closing(let version): version
        case .connecting(let identity, _, _), .accepting(let identity, _, _), .active(let identity, _, _):
            identity.protocolVersion
        }
    }

    public var isActive: Bool {
        if case .active = state { return true }
        return false
    }

    /// True while packets are held back for the CONNACK; the handler stops reading when this
    /// holds more than the limit.
    public var pendingIsFull: Bool {
        switch state {
        case .connecting(_, let pending, _), .accepting(_, _, let pending): pending.count >= settings.pendingLimit
        default: false
        }
    }

    // MARK: - Inputs

    /// A packet or a decoding failure from the peer. `connection` is a fresh number the caller
    /// draws only when `needsConnectionNumber(for:)` says so (a first CONNECT).
    ///
    /// `identity` is the identity authority's decision on a first CONNECT; nil: no authority,
    /// the Username (or else the ClientID) is believed.
    public mutating func received(
        _ inbound: MQTTInbound, connection: ConnectionNumber = 0, remoteAddress: String = "",
        identity decision: IdentityDecision? = nil, now: NIODeadline
    ) -> Action {
        switch state {
        case .awaitingConnect:
            switch inbound {
            case .packet(.connect(let connect)):
                return connectReceived(connect, connection: connection, remoteAddress: remoteAddress, decision: decision)
            case .packet(let other):
                // The decoder refuses anything but CONNECT first; be safe anyway.
                state = .closing(nil)
                return .reject(connack: nil, why: "\(other.type) before CONNECT")
            case .failure(let error):
                let answer = Self.connackForBrokenConnect(error)
                state = .closing(answer.map { _ in error.protocolVersion ?? .mqtt3_1_1 })
                if let limit = Self.limit(of: error) {
                    return .refuse(connack: answer, limit: limit, why: error.description)
                }
                return .reject(connack: answer, why: error.description)
            }
        case .connecting(let identity, var pending, let abandoned):
            pending.append(inbound)
            state = .connecting(identity, pending: pending, abandoned: abandoned)
            return .none
        case .accepting(let identity, let grant, var pending):
            pending.append(inbound)
            state = .accepting(identity, grant, pending: pending)
            return .none
        case .active(let identity, let grant, _):
            state = .active(identity, grant, lastActivity: now)
            switch inbound {
            case .packet(let packet):
                if identity.protocolVersion == .mqtt5, let (limit, why) = propertyViolation(packet) {
                    // MQTT 5 has no code for a property too large but the packet's own (0x95).
                    return closeForClientError(identity, code: .packetTooLarge, why: why, limit: limit)
                }
                return activePacket(packet, identity: identity, grant: grant)
            case .failure(let error):
                return closeForClientError(
                    identity, code: error.reasonCode, why: error.description, limit: Self.limit(of: error))
            }
        case .closing:
            return .none
        }
    }

    /// True when `received` will start a claim: the caller then draws a connection number.
    public func needsConnectionNumber(for inbound: MQTTInbound) -> Bool {
        if case .awaitingConnect = state, case .packet(.connect) = inbound { return true }
        return false
    }

    /// The ledger's answer to the claim `received` asked for.
    public mutating func claimCompleted(_ result: Result<ClaimOutcome, LedgerError>) -> Action {
        guard case .connecting(let identity, let pending, let abandoned) = state else { return .none }
        let grant: SessionGrant
        switch result {
        case .failure(let error):
            state = .closing(identity.protocolVersion)
            return .reject(connack: connack(identity, code: .serverUnavailable), why: "ledger: \(error)")
        case .success(.rejected(let reason, _)):
            state = .closing(identity.protocolVersion)
            var code = Self.reasonCode(for: reason, authenticationMethod: identity.authenticationMethod)
            var why = "\(reason)"
            if let refusal = identity.identityRefusal,
                [.unknownClient, .clientDisabled, .authenticationFailed, .clientAuthorizationError, .quotaExceeded,
                 .clientAuthenticationError].contains(reason)
            {
                code = refusal.code
                why += ": \(refusal.detail)"
                if code == .connectionRateExceeded {
                    return .refuse(connack: connack(identity, code: code), limit: .connectsPerSecondPerSession, why: why)
                }
            }
            return .reject(connack: connack(identity, code: code), why: why)
        case .success(.granted(let granted)):
            grant = granted
        }
        switch abandoned {
        case nil:
            state = .accepting(identity, grant, pending: pending)
            return .accept(Acceptance(identity: identity, grant: grant, connack: successConnack(identity, grant)))
        case .lost(let reason):
            state = .closing(identity.protocolVersion)
            return .abandon(grant, Closing(
                packets: [], release: release(identity, reason), why: "\(reason) before the CONNACK",
                channelGone: true))
        case .takenOver:
            // Granted, then replaced before the CONNACK went out: tell the client both.
            state = .closing(identity.protocolVersion)
            var packets = [successConnack(identity, grant)]
            if identity.protocolVersion == .mqtt5 {
                packets.append(.disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver)))
            }
            return .abandon(grant, Closing(packets: packets, release: nil, why: "sessionTakenOver", channelGone: false))
        case .shutdown:
            state = .closing(identity.protocolVersion)
            var packets = [successConnack(identity, grant)]
            if identity.protocolVersion == .mqtt5 {
                packets.append(.disconnect(MQTTDisconnect(reasonCode: .serverShuttingDown)))
            }
            return .abandon(grant, Closing(
                packets: packets, release: release(identity, .serverInitiatedDisconnect), why: "serverInitiatedDisconnect",
                channelGone: false))
        case .sessionOverflowed:
            state = .closing(identity.protocolVersion)
            var packets = [successConnack(identity, grant)]
            if identity.protocolVersion == .mqtt5 {
                packets.append(.disconnect(MQTTDisconnect(reasonCode: .quotaExceeded)))
            }
            return .abandon(grant, Closing(packets: packets, release: nil, why: "sessionOverflow", channelGone: false))
        case .revoked(let why):
            state = .closing(identity.protocolVersion)
            var packets = [successConnack(identity, grant)]
            if identity.protocolVersion == .mqtt5 {
                packets.append(.disconnect(MQTTDisconnect(reasonCode: .notAuthorized)))
            }
            return .abandon(grant, Closing(
                packets: packets, release: release(identity, .clientAuthenticationError),
                why: "clientAuthenticationError: \(why)", channelGone: false))
        }
    }

    /// The replaced connection is gone, the session attached and the CONNACK sent: packets
    /// that waited are returned for `received`, in order, and keep-alive starts.
    public mutating func accepted(now: NIODeadline) -> (pending: [MQTTInbound], keepAlive: NIODeadline?) {
        guard case .accepting(let identity, let grant, let pending) = state else { return ([], nil) }
        state = .active(identity, grant, lastActivity: now)
        return (pending, keepAliveDeadline(identity, from: now))
    }

    /// Answers to the client were sent: PUBACK, PUBCOMP and a failing PUBREC end a PUBLISH's
    /// use of the Receive Maximum (MQTT 5.0 section 4.9).
    public mutating func answered(_ packets: [MQTTPacket]) {
        guard !inboundInFlight.isEmpty else { return }
        for packet in packets {
            switch packet {
            case .puback(let response), .pubcomp(let response):
                inboundInFlight.remove(response.packetIdentifier)
            case .pubrec(let response) where response.reasonCode.rawValue >= 0x80:
                inboundInFlight.remove(response.packetIdentifier)
            default:
                break
            }
        }
    }

    /// The client is known to be sending although nothing was handed in (its packets are held
    /// back by the publish budget): keep-alive counts from `now`.
    public mutating func touched(now: NIODeadline) {
        guard case .active(let identity, let grant, _) = state else { return }
        state = .active(identity, grant, lastActivity: now)
    }

    /// The keep-alive timer fired.
    public mutating func keepAliveTimerFired(now: NIODeadline) -> Action {
        guard case .active(let identity, _, let last) = state, let deadline = keepAliveDeadline(identity, from: last)
        else { return .none }
        guard now >= deadline else { return .scheduleKeepAlive(deadline) }
        state = .closing(identity.protocolVersion)
        return .close(Closing(
            packets: disconnect(identity, .keepAliveTimeout), release: release(identity, .connectionLost),
            why: "keep-alive timeout (\(identity.keepAlive)s x 1.5)", channelGone: false))
    }

    /// No CONNECT in time.
    public mutating func connectTimeoutFired() -> Action {
        guard case .awaitingConnect = state else { return .none }
        state = .closing(nil)
        return .refuse(connack: nil, limit: .connectTimeoutSeconds, why: "no CONNECT in time")
    }

    /// The connection is one more than `limits.maxConnections`: closed before anything is read.
    public mutating func tooManyConnections(maximum: Int) -> Action {
        guard case .awaitingConnect = state else { return .none }
        state = .closing(nil)
        return .refuse(connack: nil, limit: .maxConnections, why: "more than \(maximum) connections")
    }


    // MARK: - Rules

    private mutating func connectReceived(
        _ connect: MQTTConnect, connection: ConnectionNumber, remoteAddress: String, decision: IdentityDecision?
    ) -> Action {
        let version = connect.protocolVersion
        let requested: UInt32
        if version == .mqtt5 {
            requested = connect.properties.sessionExpiryInterval ?? 0
        } else {
            // 3.1.1 has no interval: a kept session lasts as long as the policy allows.
            requested = connect.cleanStart ? 0 : UInt32.max
        }
        // DESIGN §1: the Username names the client; without one, the session name does.
        // With an identity authority, the name is its decision (a certificate may name the client).
        let authenticationName =
            decision?.authenticationName ?? AuthenticationName(unchecked: connect.userName ?? connect.clientIdentifier)
        let method = version == .mqtt5 ? connect.properties.authenticationMethod : nil
        var verdict = decision?.verdict ?? .authenticated
        // Only a token or the webhook takes an authentication method; any other is refused (0x8C).
        let methodTaken = decision.map { $0.method == .jwt || $0.method == .webhook } ?? false
        if method != nil && !methodTaken { verdict = .authenticationFailed }
        var keepAlive = connect.keepAlive
        var serverKeepAlive: UInt16?
        if let maximum = settings.maximumKeepAlive, keepAlive == 0 || keepAlive > maximum {
            guard version == .mqtt5 else {
                // 3.1.1 cannot be told another keep-alive; refused before the ledger is asked.
                state = .closing(version)
                return .reject(
                    connack: .connack(MQTTConnAck(reasonCode: .clientIdentifierNotValid)),
                    why: "keep-alive \(keepAlive)s, the maximum is \(maximum)s (3.1.1 cannot be told)")
            }
            keepAlive = maximum
            serverKeepAlive = maximum
        }
        if let (limit, why, code) = connectViolation(connect) {
            // Refused before the ledger is asked, as a CONNECT the decoder refused: 3.1.1 has no
            // return code for it and just loses the connection.
            state = .closing(version)
            let connack: MQTTPacket? = version == .mqtt5 ? .connack(MQTTConnAck(reasonCode: code)) : nil
            return .refuse(connack: connack, limit: limit, why: why)
        }
        var identity = Identity(
            sessionName: SessionName(unchecked: connect.clientIdentifier),
            authenticationName: authenticationName,
            connection: connection, protocolVersion: version, requestedExpiry: requested,
            keepAlive: keepAlive,
            receiveMaximum: min(
                version == .mqtt5 ? Int(connect.properties.receiveMaximum ?? 65_535) : 20,
                settings.maximumOutboundInflight),
            maximumPacketSize: version == .mqtt5 ? connect.properties.maximumPacketSize.map(Int.init) : nil,
            remoteAddress: remoteAddress, authenticationMethod: method, will: connect.will)
        identity.serverKeepAlive = serverKeepAlive
        if version == .mqtt5 {
            identity.outboundTopicAliasMaximum = min(connect.properties.topicAliasMaximum ?? 0, settings.topicAliasMaximum)
        }
        if let method, !methodTaken {
            identity.identityRefusal = (.badAuthenticationMethod, "authentication method '\(method)' is not supported")
        } else if let decision, decision.verdict != .authenticated {
            identity.identityRefusal = (Self.refusalCode(decision), decision.detail)
        }
        state = .connecting(identity, pending: [], abandoned: nil)
        return .claim(ClaimRequest(
            authenticationName: identity.authenticationName, sessionName: identity.sessionName,
            connection: connection, protocolVersion: ProtocolVersion(rawValue: version.rawValue) ?? .unknown,
            cleanStart: connect.cleanStart, requestedExpiryInterval: requested, remoteAddress: remoteAddress,
            identity: verdict))
    }

    private mutating func activePacket(_ packet: MQTTPacket, identity: Identity, grant: SessionGrant) -> Action {
        switch packet {
        case .pingreq:
            return .send([.pingresp])
        case .publish(var publish):
            if let alias = publish.properties.topicAlias {
                // MQTT-3.3.2-8/9: 0 and aliases above our Topic Alias Maximum are invalid.
                guard alias != 0, alias <= settings.topicAliasMaximum else {
                    return closeForClientError(
                        identity, code: .topicAliasInvalid,
                        why: "Topic Alias \(alias), the maximum is \(settings.topicAliasMaximum)",
                        limit: alias == 0 ? nil : .topicAliasMaximum)
                }
                if publish.topicName.isEmpty {
                    guard let topic = inboundAliases[alias] else {
                        return closeForClientError(
                            identity, code: .protocolError, why: "Topic Alias \(alias) used before it was set")
                    }
                    publish.topicName = topic
                } else {
                    inboundAliases[alias] = publish.topicName
                }
                // The broker sees the full topic; the alias meant something on this connection only.
                publish.properties.topicAlias = nil
            } else if publish.topicName.isEmpty {
                return closeForClientError(identity, code: .protocolError, why: "PUBLISH without a topic name")
            }
            // After the alias is resolved: an alias must not carry a topic the limits refuse.
            if let (limit, why) = topicViolation(publish.topicName) {
                return refusePublish(publish, identity: identity, limit: limit, why: why)
            }
            // Section 3.2.2.3.5: Retain Available 0 in the CONNACK makes a retained PUBLISH an error (0x9A).
            if publish.retain, identity.protocolVersion == .mqtt5, settings.capabilities.retainAvailable == false {
                return closeForClientError(identity, code: .retainNotSupported, why: "retained PUBLISH, retain is not available")
            }
            if identity.protocolVersion == .mqtt5, let id = publish.packetIdentifier, !inboundInFlight.contains(id) {
                // MQTT-3.3.4-9: one more than our Receive Maximum unanswered is 0x93. A resend of
                // an identifier still in flight is the same message, not one more.
                guard inboundInFlight.count < Int(settings.receiveMaximum) else {
                    return closeForClientError(
                        identity, code: .receiveMaximumExceeded,
                        why: "more than \(settings.receiveMaximum) QoS 1/2 PUBLISHes unacknowledged",
                        limit: .receiveMaximum)
                }
                inboundInFlight.insert(id)
            }
            return .toBroker(.publish(publish))
        case .puback, .pubrec, .pubrel, .pubcomp, .subscribe, .unsubscribe:
            return .toBroker(packet)
        case .disconnect(let disconnect):
            let newExpiry = identity.protocolVersion == .mqtt5 ? disconnect.properties.sessionExpiryInterval : nil
            if let newExpiry, newExpiry != 0, identity.requestedExpiry == 0 {
                // MQTT-3.14.2-2: a session that was to end with the connection cannot be kept now.
                return closeForClientError(
                    identity, code: .protocolError, why: "DISCONNECT raises the Session Expiry Interval from 0")
            }
            state = .closing(identity.protocolVersion)
            var request = release(identity, .clientInitiatedDisconnect)
            request.newExpiryInterval = newExpiry
            let why = disconnect.reasonCode == .normalDisconnection
                ? Self.normalDisconnectWhy : "clientInitiatedDisconnect (\(disconnect.reasonCode))"
            return .close(Closing(
                packets: [], release: request, why: why,
                channelGone: false, publishWill: disconnect.reasonCode != .normalDisconnection))
        case .connect:
            return closeForClientError(identity, code: .protocolError, why: "second CONNECT")
        case .auth(let auth):
            return authReceived(auth, identity: identity)
        case .connack, .suback, .unsuback, .pingresp:
            return closeForClientError(identity, code: .protocolError, why: "\(packet.type) from a client")
        }
    }

    /// Made once: every clean end would format it again.
    private static let normalDisconnectWhy = "clientInitiatedDisconnect (\(MQTTReasonCode.normalDisconnection))"

    mutating func closeForClientError(
        _ identity: Identity, code: MQTTReasonCode, why: String, limit: FrontLimit? = nil
    ) -> Action {
        state = .closing(identity.protocolVersion)
        return .close(Closing(
            packets: disconnect(identity, code), release: release(identity, .clientError), why: why, channelGone: false,
            limit: limit))
    }

    func release(_ identity: Identity, _ reason: DisconnectReason) -> ReleaseRequest {
        ReleaseRequest(
            sessionName: identity.sessionName, connection: identity.connection, reason: reason,
            remoteAddress: identity.remoteAddress)
    }

    /// A v5 DISCONNECT; 3.1.1 has no server DISCONNECT, its client just loses the connection.
    func disconnect(_ identity: Identity, _ code: MQTTReasonCode) -> [MQTTPacket] {
        identity.protocolVersion == .mqtt5 ? [.disconnect(MQTTDisconnect(reasonCode: code))] : []
    }

    private func connack(_ identity: Identity, code: MQTTReasonCode) -> MQTTPacket {
        .connack(MQTTConnAck(sessionPresent: false, reasonCode: code))
    }

    func successConnack(_ identity: Identity, _ grant: SessionGrant) -> MQTTPacket {
        var properties = MQTTProperties()
        if identity.protocolVersion == .mqtt5 {
            // Section 3.2.2.3.2: the server tells the interval in force when it is not the one asked.
            let changedExpiry = grant.expiryInterval != identity.requestedExpiry
            if let method = identity.authenticationMethod {
                // Section 4.12: an accepted enhanced authentication names its method in the CONNACK.
                if changedExpiry { properties.append(.sessionExpiryInterval(grant.expiryInterval)) }
                if let serverKeepAlive = identity.serverKeepAlive { properties.append(.serverKeepAlive(serverKeepAlive)) }
                properties.append(.authenticationMethod(method))
                properties.list.append(contentsOf: settings.grantProperties.list)
            } else if !changedExpiry && identity.serverKeepAlive == nil {
                properties = settings.grantProperties
            } else {
                if changedExpiry { properties.append(.sessionExpiryInterval(grant.expiryInterval)) }
                if let serverKeepAlive = identity.serverKeepAlive { properties.append(.serverKeepAlive(serverKeepAlive)) }
                properties.list.append(contentsOf: settings.grantProperties.list)
            }
        }
        return .connack(MQTTConnAck(sessionPresent: grant.sessionPresent, reasonCode: .success, properties: properties))
    }

    private func keepAliveDeadline(_ identity: Identity, from: NIODeadline) -> NIODeadline? {
        guard identity.keepAlive > 0 else { return nil }
        // MQTT-3.1.2-22 / 3.1.1 §3.1.2.10: one and a half times the Keep Alive.
        return from + .milliseconds(Int64(identity.keepAlive) * 1500)
    }

    /// DESIGN §1's table, in v5 terms; the encoder maps them to 3.1.1 return codes (5, 4, 2, 3).
    public static func reasonCode(for reason: RejectionReason, authenticationMethod: String?) -> MQTTReasonCode {
        switch reason {
        case .invalidSessionName: .clientIdentifierNotValid  // R1
        case .quotaExceeded: .quotaExceeded  // R3
        case .ownedByAnotherClient: .notAuthorized  // R6
        case .unknownClient, .clientDisabled, .clientAuthenticationError: .notAuthorized  // R7
        case .clientAuthorizationError: .notAuthorized  // DESIGN §5
        case .authenticationFailed: authenticationMethod == nil ? .badUserNameOrPassword : .badAuthenticationMethod
        case .invalidAuthenticationName: .badUserNameOrPassword
        }
    }

    /// A CONNECT the decoder refused. A ClientID that is not valid UTF-8 is R1 (0x85 / 2);
    /// otherwise a v5 CONNACK carries the decoder's code, an unknown protocol level gets
    /// 3.1.1's return code 1, and a 3.1.1 peer just loses the connection.
    static func connackForBrokenConnect(_ error: MQTTDecodingError) -> MQTTPacket? {
        guard error.packetType == .connect else { return nil }
        switch error.problem {
        case .invalidUTF8("client identifier"), .nullCharacter("client identifier"):
            return .connack(MQTTConnAck(reasonCode: .clientIdentifierNotValid))
        case .unsupportedProtocol:
            return .connack(MQTTConnAck(reasonCode: .unsupportedProtocolVersion))
        default:
            guard error.protocolVersion == .mqtt5 else { return nil }
            return .connack(MQTTConnAck(reasonCode: error.reasonCode))
        }
    }
}

extension ConnectionStateMachine {
    var isAccepting: Bool {
        if case .accepting = state { return true }
        return false
    }
}
