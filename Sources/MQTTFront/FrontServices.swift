import Authorization
import CustodyModel
import Logging
import MQTTCodec
import NIOCore
import SessionLedger
import Synchronization

/// What every connection shares: the ledger, the pub/sub core, the registry, the log.
final class FrontServices: Sendable {
    let ledger: any SessionAuthority
    let pubsub: (any PubSubEngine)?
    let registry = ConnectionRegistry()
    let logger: Logger
    /// The limits new connections take (`FrontTunables`); a reload replaces them.
    var tunables: FrontTunables { currentTunables.withLock { $0 } }
    private let currentTunables: Mutex<FrontTunables>
    /// Who a CONNECT is; nil inside: every Username believed.
    let authority: AuthorityBox
    /// What a client may publish and subscribe to (DESIGN.md §5).
    let access: AccessBox
    /// Metrics and `$custody/...` readers (FrontMetrics.swift); shutdown's one-commit release batch.
    let operations: FrontOperations
    let metrics: FrontMetrics?
    let shutdownBatch = ShutdownBatch()
    /// Rate-limits the lines a client can cause at will (denials, limits exceeded).
    let logThrottle = LogThrottle()
    /// Connections open on every listener together, against `tunables.maximumConnections`.
    private let openConnections = Atomic<Int>(0)

    init(
        ledger: any SessionAuthority, pubsub: (any PubSubEngine)?, logger: Logger,
        configuration: MQTTFrontConfiguration, authority: (any IdentityAuthority)? = nil,
        access: any AccessControl = OpenAccess()
    ) {
        self.ledger = ledger
        self.pubsub = pubsub
        self.logger = logger
        self.authority = AuthorityBox(authority)
        self.access = AccessBox(access)
        self.operations = configuration.operations
        self.metrics = configuration.operations.metrics
        currentTunables = Mutex(FrontTunables(configuration, brokerCapabilities: pubsub?.capabilities))
    }

    /// Limits for the connections made from now on (a reload); open ones keep theirs.
    func replaceTunables(with configuration: MQTTFrontConfiguration) {
        currentTunables.withLock { current in
            current = FrontTunables(configuration, brokerCapabilities: pubsub?.capabilities, previous: current)
        }
    }

    /// Counts a new connection in; false (nothing counted) when `maximumConnections` are open.
    func admitConnection() -> Bool {
        let open = openConnections.wrappingAdd(1, ordering: .relaxed).newValue
        guard open > tunables.maximumConnections else { return true }
        openConnections.wrappingSubtract(1, ordering: .relaxed)
        return false
    }

    /// An admitted connection closed.
    func connectionClosed() {
        openConnections.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Without a broker nothing is delivered: say so in the CONNACK.
    static let noBroker: MQTTProperties = [
        .retainAvailable(false), .wildcardSubscriptionAvailable(false), .subscriptionIdentifierAvailable(false),
        .sharedSubscriptionAvailable(false),
    ]

    /// A session ended (expired, or ended with its connection): drop its pub/sub state,
    /// unless a newer connection holds the name again already.
    func sessionEnded(_ name: SessionName) {
        // Without state for the name (a clean session is dropped when it detaches) there is
        // nothing to end: no task then.
        guard let pubsub, pubsub.hasDetachedSession(name) else { return }
        let logger = self.logger
        Task {
            do {
                try await pubsub.endSession(name)
            } catch {
                logger.error("broker session end failed", metadata: ["session_name": "\(name)", "error": "\(error)"])
            }
        }
    }
}
