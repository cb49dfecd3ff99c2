import EtcdGateway
import Foundation
import LedgerCore
import Logging
import SessionLedger
import Synchronization

/// Session ownership decided by etcd for a cluster of nodes (DESIGN.md §7), behind the same
/// door as the embedded ledger. A claim is one etcd Txn that compares the session key (its
/// mod revision as last seen) and a free slot of the client, and puts both; its revision is
/// the session's epoch. The node's own LMDB ledger then records what was decided, with that
/// epoch, and only then is the claim answered: a CONNACK follows both.
///
/// What every node knows of the others comes from one watch on the key prefix (`ClusterView`):
/// a session moved away from this node ends its connection here (DISCONNECT 0x8E); a node
/// whose key went with its lease has its connected sessions recorded as lost by whichever
/// survivor's Txn wins. This node's key lives on its lease: when the lease lapses, or etcd
/// cannot confirm it in time, the node stops serving (DISCONNECT 0x88 to every connection,
/// CONNECTs refused) before any other node may take its sessions.
public final class ClusterSessionAuthority: SessionAuthority {
    public struct Settings: Sendable {
        public var nodeID: String
        /// Seconds the node's lease lives without a keepalive.
        public var leaseSeconds: Int64
        public var keys: ClusterKeys

        public init(nodeID: String, leaseSeconds: Int64 = 10, keys: ClusterKeys = ClusterKeys()) {
            self.nodeID = nodeID
            self.leaseSeconds = leaseSeconds
            self.keys = keys
        }
    }

    /// A session connected on this node: the connection, and the revision of the key as this
    /// node last wrote it (a release or a move compares it).
    struct Held: Sendable {
        var connection: ConnectionNumber
        var modRevision: Int64
        var record: SessionRecord
        /// This node is writing the end of it: the watch leaves it to that write.
        var ending = false
    }

    struct State {
        var held: [String: Held] = [:]
        var leaseID: Int64 = 0
        var serving = false
        var leader = false
        /// When the last keepalive that etcd confirmed was sent (uptime ns).
        var confirmedAt: UInt64 = 0
        var onTakenOver: (@Sendable (ConnectionNumber) -> Void)?
        var onLapsed: (@Sendable (ConnectionNumber) -> Void)?
        var onExpired: (@Sendable ([LedgerEvent]) -> Void)?
        /// Before a grant is recorded and answered: the session (whether its state is
        /// present, and the node that held it before) is made ready here; a throw refuses it.
        var onGrant: (@Sendable (SessionName, Bool, String?) async throws -> Void)?
        /// A dead node's connection that this node recorded as lost (its will goes now).
        var onLost: (@Sendable (SessionName) -> Void)?
        /// Sessions whose connections a lapse ended here (recorded already) while etcd could
        /// not hear it: written to etcd once the node has a lease again.
        var lapsed: Set<String> = []
        /// Sessions still shown connected on this node at its start (a previous run that died)
        /// whose connections this node ended (`reconcile`), not a survivor.
        var endedAtStart: Set<SessionName> = []
        var tasks: [Task<Void, Never>] = []
        var closed = false
        /// Slots of a client that claims on this node are writing now (client key → slots).
        var reserved: [String: Set<Int>] = [:]
    }

    public let settings: Settings
    public let gateway: EtcdGateway
    /// This node's ledger: what this node decided and saw, with the epochs.
    public let local: LMDBSessionLedger
    public let policy: NamespacePolicy
    let view: ClusterView
    /// Every claim, release and ending of this node goes to etcd through it, batched.
    let writes: ClusterWriteBatcher
    let state = Mutex(State())
    let logger: Logger
    let clock: LedgerClock
    var keys: ClusterKeys { settings.keys }
    var nodeID: String { settings.nodeID }

    public var recovery: RecoveryReport { local.recovery }
    public var head: LedgerHead { local.head }
    /// The cluster's sessions, as etcd holds them (this node's view, kept by its watch): every
    /// node's, not only this one's.
    public var sessionCounts: SessionCounts? { view.counts() }

    public init(
        settings: Settings, gateway: EtcdGateway, local: LMDBSessionLedger, logger: Logger = Logger(label: "custody.cluster"),
        clock: @escaping LedgerClock = wallClockMicroseconds
    ) {
        self.settings = settings
        self.gateway = gateway
        self.local = local
        self.policy = local.policy
        self.logger = logger
        self.clock = clock
        view = ClusterView(keys: settings.keys)
        writes = ClusterWriteBatcher(gateway: gateway, nodeKey: settings.keys.node(settings.nodeID))
    }

    /// Where the front is told of connections that lost their session here: moved to another
    /// node (`takenOver`: DISCONNECT 0x8E) or this node's lease lapsed (`lapsed`: 0x9C).
    public func onConnectionEnded(
        takenOver: @escaping @Sendable (ConnectionNumber) -> Void, lapsed: @escaping @Sendable (ConnectionNumber) -> Void
    ) {
        state.withLock {
            $0.onTakenOver = takenOver
            $0.onLapsed = lapsed
        }
    }

    /// Called before each grant is recorded and answered, with the session, whether its state
    /// is present, and the node that held it before (nil: a new session); a throw refuses the
    /// CONNECT (0x88) and takes the grant back in etcd.
    public func beforeGranting(_ body: @escaping @Sendable (SessionName, Bool, String?) async throws -> Void) {
        state.withLock { $0.onGrant = body }
    }

    /// Told of each session of a dead node whose loss this node recorded
    /// (`disconnected(connectionLost)`), once recorded.
    public func onConnectionLost(_ body: @escaping @Sendable (SessionName) -> Void) {
        state.withLock { $0.onLost = body }
    }

    /// The sessions whose connections, still up when this node's previous run died, this node
    /// ended at its start: their wills are this node's to send, from its broker's store. The
    /// others a survivor ended, and sends (or, resumed in time, does not send) their wills.
    public var sessionsEndedAtStart: Set<SessionName> { state.withLock { $0.endedAtStart } }

    /// Whether the session is connected now (on any node), as this node's view shows.
    public func isConnected(_ name: SessionName) -> Bool {
        view.session(name.value)?.record.connected ?? false
    }

    /// Whether this node holds `name` in etcd now (connected here, or disconnected here last),
    /// as its view shows.
    public func holds(_ name: SessionName) -> Bool {
        view.session(name.value)?.record.node == nodeID
    }

    /// Told of the sessions this node expired (their pub/sub state goes).
    public func onSessionsExpired(_ body: @escaping @Sendable ([LedgerEvent]) -> Void) {
        state.withLock { $0.onExpired = body }
    }

    public func nextConnectionNumber() -> ConnectionNumber { local.nextConnectionNumber() }
    public func now() -> Int64 { clock() }

    static func failure(_ error: EtcdGatewayError) -> LedgerError {
        .storage(operation: "etcd", code: -1, message: error.description)
    }

    static let lapsedError = LedgerError.storage(
        operation: "etcd", code: -2, message: "this node's lease in etcd has lapsed; it serves no sessions until it has a new one")

    // MARK: Claims

    public func claim(_ request: ClaimRequest, _ done: @escaping @Sendable (Result<ClaimOutcome, LedgerError>) -> Void) {
        Task { done(await self.decide(request)) }
    }

    func decide(_ request: ClaimRequest) async -> Result<ClaimOutcome, LedgerError> {
        // R1 and R7 need nobody's agreement: the pure rules refuse, this ledger records it.
        let precheck = SessionRules.plan(request, current: nil, requesterLiveSessions: 0, policy: policy, now: now())
        if case .reject(let reason) = precheck.decision {
            return await recordRejection(request, reason, epoch: view.revision)
        }
        guard isServing else { return .failure(Self.lapsedError) }
        let name = request.sessionName
        let client = request.authenticationName
        let sessionKey = keys.session(name)
        var seen = view.session(name.value)
        var slots = view.slots(of: client.key)
        let expiry = policy.effectiveExpiry(requested: request.requestedExpiryInterval)
        var slotsRead = false
        for _ in 0..<16 {
            let now = self.now()
            var live = seen
            var stale: ClusterView.Entry?
            if let entry = seen, entry.record.hasExpired(at: now) {
                stale = entry
                live = nil
            }
            if let live, live.record.ownerName != client {
                // R6: nothing written in etcd; this node records the refusal.
                return await recordRejection(request, .ownedByAnotherClient, epoch: max(view.revision, live.modRevision))
            }
            var compare = [EtcdCompare(key: sessionKey, .modRevision(seen?.modRevision ?? 0))]
            var operations: [EtcdOperation] = []
            var touched = [sessionKey]
            let slot: Int
            var reserved: Int?
            if let held = live ?? (stale?.record.ownerName == client ? stale : nil) {
                slot = held.record.slot
            } else {
                if let stale {
                    // A session past its deadline that the expiring node has not ended yet:
                    // it ends in this Txn, and its owner's slot goes with it.
                    let staleSlot = keys.slot(stale.record.slot, of: stale.record.ownerName)
                    operations.append(.delete(key: staleSlot))
                    touched.append(staleSlot)
                    if stale.record.ownerName == client { slots.removeValue(forKey: stale.record.slot) }
                }
                // R2/R3: the cap is the client's slots, counted by etcd across every node. A
                // slot another claim of this node is writing now is not offered twice.
                guard let free = reserveSlot(of: client, besides: slots) else {
                    // The view may lag behind the slots freed elsewhere: etcd says, once.
                    if !slotsRead {
                        slotsRead = true
                        do {
                            let prefix = keys.slots(of: client)
                            slots = ClusterView.slots(from: try await gateway.range(prefix, rangeEnd: prefixEnd(of: prefix)).keyValues, keys: keys)
                        } catch {
                            return .failure(Self.failure(error))
                        }
                        continue
                    }
                    return await recordRejection(request, .quotaExceeded, epoch: view.revision)
                }
                slot = free
                reserved = free
                compare.append(.absent(keys.slot(free, of: client)))
                operations.append(.put(key: keys.slot(free, of: client), value: Data(name.value.utf8)))
                touched.append(keys.slot(free, of: client))
            }
            let record = SessionRecord(
                owner: client.value, node: nodeID, connection: request.connection, connected: true, deadline: 0,
                expiry: expiry, slot: slot, protocolVersion: request.protocolVersion.rawValue, cleanStart: request.cleanStart)
            operations.append(.put(key: sessionKey, value: record.encoded()))
            let slotsPrefix = keys.slots(of: client)
            let outcome = await writes.submit(ClusterWrite(
                compare: compare, success: operations,
                reads: [.range(key: sessionKey), .range(key: slotsPrefix, rangeEnd: prefixEnd(of: slotsPrefix))],
                keys: touched))
            let result: Int64
            switch outcome {
            case .applied(let revision):
                result = revision
            case .failed(let error):
                if let reserved { releaseSlot(reserved, of: client) }
                // No answer: the Txn may have been applied all the same. The client hears 0x88,
                // so a grant it made must not stay: ended as soon as etcd answers again.
                abandon(name, connection: request.connection)
                return .failure(Self.failure(error))
            case .lapsed:
                if let reserved { releaseSlot(reserved, of: client) }
                await lapse(why: "a claim found this node's key gone from etcd or on another lease")
                return .failure(Self.lapsedError)
            case .conflict(let reads):
                // Someone else moved first: look again at what etcd holds.
                if let reserved { releaseSlot(reserved, of: client) }
                seen = reads.value(sessionKey).flatMap(ClusterView.Entry.init)
                slots = ClusterView.slots(from: reads.under(slotsPrefix), keys: keys)
                continue
            }
            let epoch = result
            view.apply(name: name.value, entry: ClusterView.Entry(record: record, modRevision: epoch))
            if let reserved { releaseSlot(reserved, of: client) }
            // R4 on this node: the old connection ends here, as on a single node. On another
            // node: that node sees the move in its watch.
            var events: [LedgerEvent] = []
            var replaced: ConnectionNumber?
            let previous = live?.record
            var taken: Held?
            if let previous, previous.connected, previous.node == nodeID {
                taken = state.withLock { $0.held.removeValue(forKey: name.value) }
                if let taken {
                    replaced = taken.connection
                    events.append(taken.record.event(.disconnected(.sessionTakenOver), session: name, epoch: epoch))
                }
            }
            events.append(LedgerEvent(
                kind: .connected, authenticationName: client, sessionName: name, connection: request.connection,
                protocolVersion: request.protocolVersion, cleanStart: request.cleanStart, expiryInterval: expiry,
                remoteAddress: request.remoteAddress, epoch: UInt64(epoch)))
            state.withLock { $0.held[name.value] = Held(connection: request.connection, modRevision: epoch, record: record) }
            let present: Bool
            if let previous {
                present = !request.cleanStart && (previous.connected ? previous.expiry > 0 : true)
            } else {
                present = false
            }
            let recorded: [LedgerEvent]
            do {
                // The session's state comes here from the node that held it (cluster messages).
                if let prepare = state.withLock({ $0.onGrant }) {
                    try await prepare(name, present, previous?.node)
                }
                recorded = try await local.record(events)
            } catch {
                // Granted in etcd but not durable here (or its state could not be brought
                // here): nothing is granted (R8), so etcd must not keep the grant either.
                await takeBack(
                    Grant(name: name, record: record, epoch: epoch, connection: request.connection),
                    previous: live, replaced: taken)
                return .failure(error as? LedgerError ?? .storage(operation: "cluster session state", code: -4, message: "\(error)"))
            }
            return .success(.granted(SessionGrant(
                sequence: recorded.last!.sequence, connection: request.connection, sessionPresent: present,
                expiryInterval: expiry, replacedConnection: replaced)))
        }
        return .failure(.storage(operation: "etcd", code: -3, message: "the session \(name) changed under 16 claims in a row"))
    }

    /// The first slot of `client` neither taken in `slots` nor being written by another claim
    /// here, now reserved for the caller; nil when every slot is.
    func reserveSlot(of client: AuthenticationName, besides slots: [Int: String]) -> Int? {
        state.withLock { state in
            let busy = state.reserved[client.key] ?? []
            guard let free = (0..<policy.maximumClientSessionsPerAuthenticationName).first(where: { slots[$0] == nil && !busy.contains($0) })
            else { return nil }
            state.reserved[client.key, default: []].insert(free)
            return free
        }
    }

    func releaseSlot(_ slot: Int, of client: AuthenticationName) {
        state.withLock { state in
            state.reserved[client.key]?.remove(slot)
            if state.reserved[client.key]?.isEmpty == true { state.reserved.removeValue(forKey: client.key) }
        }
    }

    func recordRejection(_ request: ClaimRequest, _ reason: RejectionReason, epoch: Int64) async -> Result<ClaimOutcome, LedgerError> {
        let event = LedgerEvent(
            kind: .rejected(reason), authenticationName: request.authenticationName, sessionName: request.sessionName,
            connection: request.connection, protocolVersion: request.protocolVersion, cleanStart: request.cleanStart,
            expiryInterval: 0, remoteAddress: request.remoteAddress, epoch: UInt64(max(epoch, 0)))
        do {
            let recorded = try await local.record([event])
            return .success(.rejected(reason, sequence: recorded[0].sequence))
        } catch {
            return .failure(error)
        }
    }

    // MARK: Releases

    public func release(_ request: ReleaseRequest, _ done: @escaping @Sendable (Result<LedgerEvent?, LedgerError>) -> Void) {
        Task { done(await self.release(request)) }
    }

    public func releaseAll(
        _ requests: [ReleaseRequest], _ done: @escaping @Sendable (Result<[LedgerEvent?], LedgerError>) -> Void
    ) {
        Task {
            let results = await withTaskGroup(of: (Int, Result<LedgerEvent?, LedgerError>).self) { group in
                for (index, request) in requests.enumerated() {
                    group.addTask { (index, await self.release(request)) }
                }
                var results = [Result<LedgerEvent?, LedgerError>](repeating: .success(nil), count: requests.count)
                for await (index, result) in group { results[index] = result }
                return results
            }
            do {
                done(.success(try results.map { try $0.get() }))
            } catch {
                done(.failure(error as! LedgerError))
            }
        }
    }

    /// The end of a connection: in etcd the session waits disconnected until its deadline
    /// (it keeps its slot: a disconnected session still counts against the cap), or ends at
    /// once with expiry interval 0 (key and slot deleted); then this node records it.
    func release(_ request: ReleaseRequest) async -> Result<LedgerEvent?, LedgerError> {
        let name = request.sessionName.value
        let mine = state.withLock { state -> Held? in
            guard var held = state.held[name], held.connection == request.connection, !held.ending else { return nil }
            held.ending = true
            state.held[name] = held
            return held
        }
        guard let held = mine else { return .success(nil) }
        var expiry = held.record.expiry
        if let requested = request.newExpiryInterval, held.record.expiry > 0 || requested == 0 {
            expiry = policy.effectiveExpiry(requested: requested)
        }
        let ending = end(held.record, key: keys.session(request.sessionName), modRevision: held.modRevision, expiry: expiry)
        var epoch = held.modRevision
        switch await writes.submit(ending.write) {
        case .applied(let revision):
            epoch = revision
            view.apply(name: name, entry: ending.record.map { ClusterView.Entry(record: $0, modRevision: revision) }, revision: revision)
        case .conflict(let reads):
            // It moved meanwhile (taken over elsewhere): recorded as such here, as the
            // watch would have; this connection no longer held the session.
            state.withLock { _ = $0.held.removeValue(forKey: name) }
            let taken = held.record.event(.disconnected(.sessionTakenOver), session: request.sessionName, epoch: reads.revision)
            do { try await local.record([taken]) } catch { return .failure(error) }
            return .success(nil)
        case .lapsed:
            logger.warning("release not written to etcd: this node's lease has lapsed", metadata: ["session_name": "\(name)"])
        case .failed(let error):
            // etcd cannot hear it now. The connection has ended all the same and is recorded
            // here; etcd learns it when this node's lease lapses (connection lost) or restarts.
            logger.warning("release not written to etcd", metadata: ["session_name": "\(name)", "error": "\(error)"])
        }
        guard state.withLock({ $0.held[name]?.connection == request.connection ? $0.held.removeValue(forKey: name) : nil }) != nil
        else { return .success(nil) }
        var event = held.record.event(.disconnected(request.reason), session: request.sessionName, epoch: epoch, expiry: expiry)
        event.remoteAddress = request.remoteAddress
        do {
            return .success(try await local.record([event]).first)
        } catch {
            return .failure(error)
        }
    }

    /// The write that ends `record`'s connection (or the session, with `expiry` 0) if the key
    /// is still at `modRevision`, and the record it leaves (nil: the key is deleted).
    func end(_ record: SessionRecord, key: String, modRevision: Int64, expiry: UInt32) -> (write: ClusterWrite, record: SessionRecord?) {
        let compare = [EtcdCompare(key: key, .modRevision(modRevision))]
        guard expiry > 0 else {
            let slot = keys.slot(record.slot, of: record.ownerName)
            return (ClusterWrite(compare: compare, success: [.delete(key: key), .delete(key: slot)], reads: [.range(key: key)], keys: [key, slot]), nil)
        }
        var left = record
        left.connected = false
        left.expiry = expiry
        left.deadline = now() + Int64(expiry) * SessionTransition.microsecondsPerSecond
        return (ClusterWrite(compare: compare, success: [.put(key: key, value: left.encoded())], reads: [.range(key: key)], keys: [key]), left)
    }

    // MARK: Reading

    public func session(_ name: SessionName) throws -> SessionEntry? {
        view.session(name.value).map { $0.record.entry(epoch: $0.modRevision) }
    }

    public func liveSessionCount(of client: AuthenticationName) throws -> Int {
        view.slots(of: client.key).count
    }

    public func liveSessionNames() throws -> Set<SessionName> {
        Set(view.sessionNames().map { SessionName(unchecked: $0) })
    }

    /// Stops the watch and the keepalive, revokes the lease (the node key goes at once, and
    /// the expiry duty with it) and closes this node's ledger.
    public func close() {
        let (tasks, lease) = state.withLock { state -> ([Task<Void, Never>], Int64) in
            state.closed = true
            state.serving = false
            state.leader = false
            return (state.tasks, state.leaseID)
        }
        for task in tasks { task.cancel() }
        if lease != 0 {
            let revoked = DispatchSemaphore(value: 0)
            let gateway = self.gateway
            Task {
                try? await gateway.revokeLease(lease)
                revoked.signal()
            }
            _ = revoked.wait(timeout: .now() + 3)
        }
        local.close()
    }
}
