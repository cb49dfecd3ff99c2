import EtcdGateway
import Foundation
import LedgerCore
import SessionLedger

// The node's life in the cluster: its key on a lease kept alive, the watch that keeps the
// view current and reacts to moves and deaths, the one node that expires deadlines.

extension ClusterSessionAuthority {
    /// Joins the cluster: a lease and the node key on it (refused while another live node uses
    /// the id), the view loaded, the watch, the keepalive and its watchdog started; then this
    /// node's connected sessions of a previous run, and those of nodes that died while
    /// nobody watched, are recorded as ended. Throws when etcd does not answer.
    public func start() async throws {
        var lease = try await gateway.grantLease(ttl: settings.leaseSeconds)
        let nodeKey = keys.node(nodeID)
        // A previous run of this node killed without revoking its lease leaves its key until
        // that lease lapses: wait for it, at most one lease and a little. Each attempt takes a
        // lease of its own: one kept while waiting would lapse unrenewed (the keepalive starts
        // only once the key is in), and the put on it would fail with "lease not found".
        let patience = DispatchTime.now().uptimeNanoseconds + UInt64(settings.leaseSeconds + 2) * 1_000_000_000
        while true {
            let claimed = try await gateway.txn(EtcdTxn(
                compare: [.absent(nodeKey)], success: [.put(key: nodeKey, value: Data(nodeID.utf8), lease: lease.id)]))
            if claimed.succeeded { break }
            try? await gateway.revokeLease(lease.id)
            guard DispatchTime.now().uptimeNanoseconds < patience else { throw ClusterError.nodeIDInUse(nodeID) }
            try await Task.sleep(for: .milliseconds(250))
            lease = try await gateway.grantLease(ttl: settings.leaseSeconds)
        }
        writes.use(lease: lease.id)
        state.withLock {
            $0.leaseID = lease.id
            $0.serving = true
            $0.confirmedAt = DispatchTime.now().uptimeNanoseconds
        }
        let (all, revision) = try await gateway.range(keys.root + "/", rangeEnd: prefixEnd(of: keys.root + "/"))
        view.load(all, revision: revision)
        let tasks = [
            Task { await self.watchLoop() },
            Task { await self.keepAliveLoop() },
            Task { await self.watchdogLoop() },
        ]
        state.withLock { $0.tasks = tasks }
        await reconcile()
        await endSessionsOfDeadNodes()
        await tryToLeadExpiry()
    }

    /// The lease id in force (0 before `start`).
    public var leaseID: Int64 { state.withLock { $0.leaseID } }
    /// Whether this node serves CONNECTs now.
    public var isServing: Bool { state.withLock { $0.serving } }
    /// Whether this node is the one that expires deadlines now.
    public var isExpiryLeader: Bool { state.withLock { $0.leader } }

    // MARK: Watch

    func watchLoop() async {
        while !Task.isCancelled {
            let from = view.revision + 1
            do {
                // Without previous values: what a change replaced is in the view and in `held`,
                // and etcd's gateway encodes every event for every watcher (half the bytes).
                // The node keys and the session keys (one range: nothing else lies between
                // them); not the slot keys, which the view reads from the session records.
                try await gateway.watch(
                    keys.nodesAndSessions.key, rangeEnd: keys.nodesAndSessions.rangeEnd, startRevision: from, previousValues: false
                ) { update in
                    await self.handle(update)
                }
            } catch {
                if Task.isCancelled { return }
                logger.warning("etcd watch broke; watching again", metadata: ["error": "\(error)"])
                if case .refused(_, let message) = error, message.contains("compact") {
                    if let (all, revision) = try? await gateway.range(keys.root + "/", rangeEnd: prefixEnd(of: keys.root + "/")) {
                        view.load(all, revision: revision)
                    }
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    func handle(_ update: EtcdGateway.WatchUpdate) async {
        let (changes, nodesGone) = view.apply(update)
        var moved: [(name: String, held: Held, epoch: Int64)] = []
        for change in changes {
            // A session this node holds, now someone else's (another node's claim) or gone.
            if let after = change.entry, after.record.node == nodeID { continue }
            let taken = state.withLock { state -> Held? in
                guard let held = state.held[change.name], !held.ending, held.modRevision < change.modRevision else { return nil }
                return state.held.removeValue(forKey: change.name)
            }
            if let taken { moved.append((change.name, taken, change.modRevision)) }
        }
        let notify = state.withLock { $0.onTakenOver }
        for (name, held, epoch) in moved {
            let session = SessionName(unchecked: name)
            do {
                try await local.record([held.record.event(.disconnected(.sessionTakenOver), session: session, epoch: epoch)])
            } catch {
                logger.error("takeover not recorded", metadata: ["session_name": "\(name)", "error": "\(error)"])
            }
            notify?(held.connection)
        }
        if nodesGone.contains(where: { $0 != nodeID || !isServing }) { await endSessionsOfDeadNodes() }
    }

    /// Connected sessions of nodes without a key (their lease lapsed): each becomes
    /// disconnected from now (or ends, with expiry interval 0), written by whichever node's
    /// Txn wins and recorded there as `disconnected(connectionLost)`.
    func endSessionsOfDeadNodes() async {
        let live = view.liveNodes()
        let mine = state.withLock { Set($0.held.keys) }
        for (name, entry) in view.sessions() where entry.record.connected && !live.contains(entry.record.node) {
            if entry.record.node == nodeID && mine.contains(name) { continue }
            // This node's own, ended by its lapse: recorded here already.
            let ownLapsed = entry.record.node == nodeID && state.withLock { $0.lapsed.remove(name) != nil }
            await endConnection(name: name, entry: entry, reason: .connectionLost, recorded: ownLapsed)
        }
    }

    /// Ends the connection `entry` shows, in etcd (if unchanged since) and in this ledger
    /// (unless `recorded` already).
    /// Returns whether etcd took the ending (another node's may have come first).
    @discardableResult
    func endConnection(name: String, entry: ClusterView.Entry, reason: DisconnectReason, recorded: Bool = false) async -> Bool {
        let session = SessionName(unchecked: name)
        let ending = end(entry.record, key: keys.session(session), modRevision: entry.modRevision, expiry: entry.record.expiry)
        guard case .applied(let revision) = await writes.submit(ending.write) else { return false }
        view.apply(name: name, entry: ending.record.map { .init(record: $0, modRevision: revision) }, revision: revision)
        guard !recorded else { return true }
        do {
            try await local.record([entry.record.event(.disconnected(reason), session: session, epoch: revision)])
        } catch {
            logger.error("end of a connection not recorded", metadata: ["session_name": "\(name)", "error": "\(error)"])
        }
        if reason == .connectionLost, entry.record.node != nodeID { state.withLock { $0.onLost }?(session) }
        return true
    }

    /// At start: what this node's ledger holds live and etcd no longer gives it ends here
    /// (`expired(notHeldInCluster)`); what etcd still shows connected on this node (a
    /// previous run that stopped without telling etcd) is disconnected from now.
    func reconcile() async {
        let sessions = view.sessions()
        // The local recovery has recorded `disconnected(brokerRestart)` for those it found
        // connected: etcd hears of them now; the others are recorded here too.
        let recovered = Set(local.recovery.disconnected.map { "\($0.sessionName.value)#\($0.connection)" })
        var endedHere: Set<SessionName> = []
        for (name, entry) in sessions where entry.record.node == nodeID && entry.record.connected {
            let ended = await endConnection(
                name: name, entry: entry, reason: .brokerRestart,
                recorded: recovered.contains("\(name)#\(entry.record.connection)"))
            if ended { endedHere.insert(SessionName(unchecked: name)) }
        }
        state.withLock { $0.endedAtStart = endedHere }
        guard let localSessions = try? local.liveSessions() else { return }
        var ended: [LedgerEvent] = []
        for (name, entry) in localSessions {
            let cluster = view.session(name.value)
            if let cluster, cluster.record.ownerName == entry.owner, cluster.record.node == nodeID,
                cluster.record.connection == entry.connection
            {
                continue
            }
            ended.append(SessionRules.endingEvent(of: entry, named: name, kind: .expired(.notHeldInCluster)))
            ended[ended.count - 1].epoch = UInt64(max(view.revision, 0))
        }
        if !ended.isEmpty { _ = try? await local.record(ended) }
    }

    // MARK: Lease

    func keepAliveLoop() async {
        let interval = max(Double(settings.leaseSeconds) / 4, 0.2)
        var rounds = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
            if Task.isCancelled { return }
            let (lease, serving) = state.withLock { ($0.leaseID, $0.serving) }
            let sent = DispatchTime.now().uptimeNanoseconds
            do {
                if serving {
                    let ttl = try await gateway.keepAlive(lease)
                    if ttl > 0 {
                        state.withLock { if $0.leaseID == lease { $0.confirmedAt = max($0.confirmedAt, sent) } }
                    } else {
                        await lapse(why: "etcd answered that the lease has lapsed")
                    }
                } else {
                    try await rejoin()
                }
                await tryToLeadExpiry()
                // Once a lease, the expiring node looks for slots that no session holds, and
                // for sessions still connected on nodes whose keys went (a survivor's ending
                // Txn that got no answer when the node's key went is not retried otherwise).
                rounds += 1
                if rounds % 4 == 0, isExpiryLeader {
                    await freeStaleSlots()
                    await endSessionsOfDeadNodes()
                }
            } catch {
                logger.warning("etcd keepalive failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Stops serving once the last confirmed keepalive is older than the lease less a third,
    /// before etcd (which counts from when it received it) can let the lease go: keepalives go
    /// every quarter, so two may be late before a busy node stops.
    func watchdogLoop() async {
        let lease = UInt64(settings.leaseSeconds) * 1_000_000_000
        let margin = lease / 3
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
            let (serving, confirmed) = state.withLock { ($0.serving, $0.confirmedAt) }
            if serving, DispatchTime.now().uptimeNanoseconds > confirmed + lease - margin {
                await lapse(why: "no keepalive confirmed by etcd within the lease")
            }
        }
    }

    /// Stops serving: every connection here ends with DISCONNECT 0x9C, recorded as
    /// `disconnected(serverError)`; CONNECTs are refused until a new lease is granted.
    func lapse(why: String) async {
        let (held, notify) = state.withLock { state -> ([String: Held], (@Sendable (ConnectionNumber) -> Void)?) in
            guard state.serving else { return ([:], nil) }
            state.serving = false
            state.leader = false
            state.lapsed.formUnion(state.held.keys)
            defer { state.held.removeAll() }
            return (state.held, state.onLapsed)
        }
        guard notify != nil || !held.isEmpty else { return }
        logger.error("this node stops serving: \(why)", metadata: ["sessions": "\(held.count)"])
        let epoch = view.revision
        let events = held.map { name, held in
            held.record.event(.disconnected(.serverError), session: SessionName(unchecked: name), epoch: epoch)
        }
        if !events.isEmpty { _ = try? await local.record(events) }
        for held in held.values { notify?(held.connection) }
    }

    /// After a lapse: a new lease and the node key on it, then serving again.
    func rejoin() async throws {
        let lease = try await gateway.grantLease(ttl: settings.leaseSeconds)
        let nodeKey = keys.node(nodeID)
        let claimed = try await gateway.txn(EtcdTxn(
            compare: [.absent(nodeKey)], success: [.put(key: nodeKey, value: Data(nodeID.utf8), lease: lease.id)]))
        guard claimed.succeeded else {
            // The old key has not gone yet (its lease still runs): try again next round.
            try? await gateway.revokeLease(lease.id)
            return
        }
        writes.use(lease: lease.id)
        state.withLock {
            $0.leaseID = lease.id
            $0.confirmedAt = DispatchTime.now().uptimeNanoseconds
            $0.serving = true
        }
        logger.notice("this node serves again", metadata: ["lease": "\(lease.id)"])
        // What the lapse ended here and etcd still shows connected on this node.
        let lapsed = state.withLock { state -> Set<String> in
            defer { state.lapsed.removeAll() }
            return state.lapsed
        }
        for name in lapsed {
            if let entry = view.session(name), entry.record.connected, entry.record.node == nodeID {
                await endConnection(name: name, entry: entry, reason: .serverError, recorded: true)
            }
        }
        await endSessionsOfDeadNodes()
    }

    // MARK: Expiry

    /// The expiry key on this node's lease, if no node holds it: one node expires at a time.
    func tryToLeadExpiry() async {
        let (lease, serving) = state.withLock { ($0.leaseID, $0.serving) }
        guard serving else { return }
        guard let result = try? await gateway.txn(EtcdTxn(
            compare: [.absent(keys.expiryLeader)],
            success: [.put(key: keys.expiryLeader, value: Data(nodeID.utf8), lease: lease)],
            failure: [.range(key: keys.expiryLeader)]))
        else { return }
        let leads = result.succeeded || result.responses.first?.keyValues.first?.lease == lease
        state.withLock { if $0.leaseID == lease { $0.leader = leads && $0.serving } }
    }

    /// Slot keys whose session does not hold them (the session key is gone, or names another
    /// owner or slot): a write that lost its session's half cannot happen (one Txn writes
    /// both), but a slot left by an older version, by hand or by a bug would keep its client
    /// below its cap for ever. The expiring node reads slots and sessions at one revision
    /// and deletes each stale slot if neither key changed since. Answers how many went.
    @discardableResult
    func freeStaleSlots() async -> Int {
        let sessions = keys.sessions, clients = keys.clients
        guard let read = try? await gateway.txn(EtcdTxn(success: [
            .range(key: clients, rangeEnd: prefixEnd(of: clients)), .range(key: sessions, rangeEnd: prefixEnd(of: sessions)),
        ])), read.responses.count == 2
        else { return 0 }
        var records: [String: (record: SessionRecord, modRevision: Int64)] = [:]
        for kv in read.responses[1].keyValues {
            guard let name = keys.sessionName(ofKey: kv.keyString), let record = SessionRecord.decode(kv.value) else { continue }
            records[name] = (record, kv.modRevision)
        }
        var writes: [ClusterWrite] = []
        for slot in read.responses[0].keyValues {
            let key = slot.keyString
            guard let (client, index) = keys.slot(ofKey: key) else { continue }
            let name = String(decoding: slot.value, as: UTF8.self)
            let sessionKey = keys.session(SessionName(unchecked: name))
            let holder = records[name]
            if let holder, holder.record.ownerName.key == client, holder.record.slot == index { continue }
            writes.append(ClusterWrite(
                compare: [EtcdCompare(key: key, .modRevision(slot.modRevision)), EtcdCompare(key: sessionKey, .modRevision(holder?.modRevision ?? 0))],
                success: [.delete(key: key)], reads: [.range(key: key), .range(key: sessionKey)], keys: [key, sessionKey]))
        }
        guard !writes.isEmpty else { return 0 }
        let freed = await withTaskGroup(of: Bool.self) { group in
            for write in writes {
                group.addTask {
                    if case .applied = await self.writes.submit(write) { return true }
                    return false
                }
            }
            var freed = 0
            for await applied in group where applied { freed += 1 }
            return freed
        }
        if freed > 0 { logger.notice("freed slots that no session held", metadata: ["slots": "\(freed)"]) }
        return freed
    }

    public func earliestDeadline() throws -> Int64? {
        guard isExpiryLeader else { return nil }
        return view.sessions().values.filter { !$0.record.connected }.map(\.record.deadline).min()
    }

    public func expireDue(limit: Int, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void) {
        Task { done(.success(await self.expireDue(limit: limit))) }
    }

    /// The expiring node ends sessions past their deadline: key and slot deleted if unchanged
    /// since seen, `expired(sessionExpired)` recorded here with the Txn's revision.
    func expireDue(limit: Int) async -> [LedgerEvent] {
        guard isExpiryLeader else { return [] }
        let now = self.now()
        let due = view.sessions().filter { $0.value.record.hasExpired(at: now) }.prefix(limit)
        // Together: the writer batches them into a few Txns.
        let events = await withTaskGroup(of: LedgerEvent?.self) { group in
            for (name, entry) in due {
                group.addTask {
                    let session = SessionName(unchecked: name)
                    let ending = self.end(entry.record, key: self.keys.session(session), modRevision: entry.modRevision, expiry: 0)
                    guard case .applied(let revision) = await self.writes.submit(ending.write) else { return nil }
                    self.view.apply(name: name, entry: nil, revision: revision)
                    return entry.record.event(.expired(.sessionExpired), session: session, epoch: revision)
                }
            }
            var events: [LedgerEvent] = []
            for await event in group { if let event { events.append(event) } }
            return events.sorted { $0.epoch < $1.epoch }
        }
        guard !events.isEmpty else { return [] }
        let recorded = (try? await local.record(events)) ?? events
        state.withLock { $0.onExpired }?(recorded)
        return recorded
    }

    public func endSession(
        _ name: SessionName, reason: ExpiryReason, _ done: @escaping @Sendable (Result<[LedgerEvent], LedgerError>) -> Void
    ) {
        Task {
            guard let entry = self.view.session(name.value) else { return done(.success([])) }
            let key = self.keys.session(name)
            self.state.withLock { if $0.held[name.value] != nil { $0.held[name.value]?.ending = true } }
            do {
                let result = try await self.gateway.txn(EtcdTxn(
                    compare: [EtcdCompare(key: key, .modRevision(entry.modRevision))],
                    success: [.delete(key: key), .delete(key: self.keys.slot(entry.record.slot, of: entry.record.ownerName))]))
                guard result.succeeded else { return done(.success([])) }
                self.view.apply(name: name.value, entry: nil, revision: result.revision)
                self.state.withLock { _ = $0.held.removeValue(forKey: name.value) }
                var drafts = SessionRules.forcedEnd(of: entry.record.entry(epoch: entry.modRevision), named: name, reason: reason)
                for index in drafts.indices { drafts[index].epoch = UInt64(result.revision) }
                done(.success(try await self.local.record(drafts)))
            } catch let error as EtcdGatewayError {
                done(.failure(Self.failure(error)))
            } catch {
                done(.failure(error as? LedgerError ?? .closed))
            }
        }
    }
}

public enum ClusterError: Error, CustomStringConvertible {
    case nodeIDInUse(String)

    public var description: String {
        switch self {
        case .nodeIDInUse(let id):
            "the node id \(id) is in use by a live node of the cluster (its key in etcd is on a lease that has not lapsed)"
        }
    }
}
