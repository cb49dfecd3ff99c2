// Inbound PUBLISH and PUBREL, and routing a message to every matching session.
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore

extension Broker {
    func handlePublish(_ publish: MQTTPublish, from session: BrokerSession) async throws(BrokerError)
        -> [MQTTPacket]
    {
        let (answer, waiter) = try decidePublish(publish, from: session)
        if let waiter { try settlePublish(publish, session.state, waiter, await waiter.wait()) }
        return answer.map { [$0] } ?? []
    }

    /// PUBLISH without a wait when nothing it changed must be made durable first (QoS 0, and
    /// QoS 1/2 to sessions that keep nothing on disk): the answers, at once. Otherwise it is
    /// decided (routed, queued) at once, and `later` hears the answers once the store has
    /// committed, on the store's thread.
    func handlePublishAtOnce(
        _ publish: MQTTPublish, from session: BrokerSession,
        later: @escaping @Sendable (Result<[MQTTPacket], BrokerError>) -> Void
    ) throws(BrokerError) -> AtOnce {
        let (answer, waiter) = try decidePublish(publish, from: session)
        guard let waiter else { return .answered(answer.map { [$0] } ?? []) }
        let state = session.state
        waiter.whenComplete { [self] result in
            do throws(BrokerError) {
                try settlePublish(publish, state, waiter, result)
                later(.success(answer.map { [$0] } ?? []))
            } catch {
                later(.failure(error))
            }
        }
        return .decided
    }

    /// After the commit a PUBLISH waited for: a QoS 2 identifier is let go of when the
    /// message was not stored (the client's resend is then delivered, not lost); a failed
    /// commit is the client's failure.
    private func settlePublish(
        _ publish: MQTTPublish, _ state: SessionState, _ waiter: CommitWaiter, _ result: Result<Void, LedgerError>
    ) throws(BrokerError) {
        if publish.qos == .exactlyOnce, let id = publish.packetIdentifier {
            locked {
                guard state.inboundCommits[id] === waiter else { return }
                state.inboundCommits[id] = nil
                // Not promised: let the client's resend be delivered, rather than lost.
                if case .failure = result { state.inboundQoS2.remove(id) }
            }
        }
        if case .failure(let error) = result { throw .storage(error) }
    }

    /// What a PUBLISH does under the lock (routes it, keeps it retained, records a QoS 2
    /// identifier) and its answer; the waiter, when the store must commit before the answer.
    private func decidePublish(_ publish: MQTTPublish, from session: BrokerSession) throws(BrokerError)
        -> (MQTTPacket?, CommitWaiter?)
    {
        guard TopicRules.isValidTopicName(publish.topicName) else {
            throw BrokerError(.topicNameInvalid, "PUBLISH topic name '\(publish.topicName)' is not valid here")
        }
        if Self.isServerTopic(publish.topicName) {
            // The server's own topics: refused, not routed (v5 says so; 3.1.1 cannot).
            let id = publish.packetIdentifier ?? 0
            let code: MQTTReasonCode = session.state.version == .mqtt5 ? .notAuthorized : .success
            switch publish.qos {
            case .atMostOnce: return (nil, nil)
            case .atLeastOnce: return (.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: code)), nil)
            case .exactlyOnce: return (.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: code)), nil)
            }
        }
        if publish.qos != .atMostOnce, publish.packetIdentifier == nil || publish.packetIdentifier == 0 {
            throw BrokerError(.protocolError, "PUBLISH QoS \(publish.qos.rawValue) without packet identifier")
        }
        let state = session.state
        if publish.properties.payloadFormatIndicator == .utf8, !Self.isValidUTF8(publish.payload) {
            // Refused, not routed (MQTT 5.0 section 3.3.2.3.2); QoS 0 has nothing to answer with.
            let id = publish.packetIdentifier ?? 0
            switch publish.qos {
            case .atMostOnce:
                throw BrokerError(.payloadFormatInvalid, "PUBLISH to '\(publish.topicName)' marked UTF-8 is not UTF-8")
            case .atLeastOnce:
                return (.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: .payloadFormatInvalid)), nil)
            case .exactlyOnce:
                return (.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: .payloadFormatInvalid)), nil)
            }
        }
        return try locked { () throws(BrokerError) -> (MQTTPacket?, CommitWaiter?) in
            try check(session)
            var batch = StoreBatch()
            let id = publish.packetIdentifier ?? 0
            let v5 = state.version == .mqtt5
            // A retained message the limits refuse: a v5 QoS 1/2 publisher hears 0x97 and the
            // message goes nowhere (an error PUBACK says it was not accepted, so delivering it
            // would contradict the answer); QoS 0 and 3.1.1 messages, which cannot be refused,
            // are delivered and not kept (`keepRetained`).
            let refused = publish.retain && v5 ? retainedRefusal(publish) : nil
            switch publish.qos {
            case .atMostOnce:
                _ = route(publish, from: state, &batch)
                if publish.retain { keepRetained(publish, from: state.name, &batch) }
                showTap(publish, state.publisher, &batch)
                return (nil, forwardToCluster(publish, submitWaiting(batch)))
            case .atLeastOnce:
                if let refused {
                    note(refused, state.name)
                    return (.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: .quotaExceeded)), nil)
                }
                let matched = route(publish, from: state, &batch)
                if publish.retain { keepRetained(publish, from: state.name, &batch) }
                showTap(publish, state.publisher, &batch)
                // In a cluster, other nodes may have subscribers where this one has none.
                let code: MQTTReasonCode = v5 && matched == 0 && clusterLink == nil ? .noMatchingSubscribers : .success
                return (.puback(MQTTPublishResponse(packetIdentifier: id, reasonCode: code)),
                        forwardToCluster(publish, submitWaiting(batch)))
            case .exactlyOnce:
                // Seen before PUBREL: the client resends; it was delivered already (4.3.3).
                if state.inboundQoS2.contains(id) {
                    return (.pubrec(MQTTPublishResponse(packetIdentifier: id)), state.inboundCommits[id])
                }
                if let refused {
                    // An error PUBREC ends the flow: no PUBREL follows, nothing to remember.
                    note(refused, state.name)
                    return (.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: .quotaExceeded)), nil)
                }
                state.inboundQoS2.insert(id)
                if state.persistent, store != nil {
                    batch.put(.sessions, key: BrokerRecords.inboundKey(state.prefix, id), value: [])
                }
                let matched = route(publish, from: state, &batch)
                if publish.retain { keepRetained(publish, from: state.name, &batch) }
                showTap(publish, state.publisher, &batch)
                // In a cluster, other nodes may have subscribers where this one has none.
                let code: MQTTReasonCode = v5 && matched == 0 && clusterLink == nil ? .noMatchingSubscribers : .success
                let waiter = forwardToCluster(publish, submitWaiting(batch))
                if let waiter { state.inboundCommits[id] = waiter }
                return (.pubrec(MQTTPublishResponse(packetIdentifier: id, reasonCode: code)), waiter)
            }
        }
    }

    /// The publish tap's records join the message's write (under the lock, in the broker's order).
    func showTap(_ publish: MQTTPublish, _ publisher: PublisherFacts?, _ batch: inout StoreBatch) {
        guard let tap, store != nil, let capture = tap.capture(publish, from: publisher) else { return }
        batch.add(capture)
    }

    /// From now on every accepted client PUBLISH is shown to `tap` (nil: to nobody). Needs a store.
    public func setPublishTap(_ tap: (any BrokerPublishTap)?) {
        precondition(tap == nil || store != nil, "a publish tap writes to the broker's store")
        locked { self.tap = tap }
        if tap != nil { tapInstalled.store(true, ordering: .releasing) }
    }

    /// Whether a publish tap was ever installed: without one, who published is not kept.
    public var hasPublishTap: Bool { tapInstalled.load(ordering: .acquiring) }

    /// Writes what `make` returns in the broker's order (under its lock, as a PUBLISH's records
    /// are): for a tap's records that come from elsewhere (lifecycle events). `make` runs
    /// under the lock: quick, and no calls into the broker.
    public func submitInOrder(_ make: () -> TapCapture?) {
        locked {
            guard let capture = make() else { return }
            guard let store, !closed else {
                capture.committed(false)
                return
            }
            flushPendingWrites()
            store.submit(capture.operations) { result in
                if case .success = result { capture.committed(true) } else { capture.committed(false) }
            }
        }
    }

    /// The store the tap's records are in, for what it does with them later (deletes once
    /// delivered, a read at start): nil for a broker without a store.
    public var tapStore: BrokerStore? { store }

    func handlePubrel(_ id: UInt16, from session: BrokerSession) async throws(BrokerError) -> [MQTTPacket] {
        let state = session.state
        let (known, waiter) = try locked { () throws(BrokerError) -> (Bool, CommitWaiter?) in
            try check(session)
            guard state.inboundQoS2.remove(id) != nil else { return (false, nil) }
            guard state.persistent, store != nil else { return (true, nil) }
            // Waited for: after PUBCOMP the client may reuse the identifier, which a stale
            // record would make look like a duplicate after a restart.
            var batch = StoreBatch()
            batch.delete(.sessions, key: BrokerRecords.inboundKey(state.prefix, id))
            return (true, submitWaiting(batch))
        }
        if let waiter, case .failure(let error) = await waiter.wait() { throw .storage(error) }
        let code: MQTTReasonCode = known || state.version != .mqtt5 ? .success : .packetIdentifierNotFound
        return [.pubcomp(MQTTPublishResponse(packetIdentifier: id, reasonCode: code))]
    }

    /// Well-formed UTF-8 (no overlong forms, no surrogates), as Payload Format Indicator 1 promises.
    static func isValidUTF8(_ buffer: ByteBuffer) -> Bool {
        buffer.withUnsafeReadableBytes { bytes in
            var iterator = bytes.makeIterator()
            var decoder = UTF8()
            while true {
                switch decoder.decode(&iterator) {
                case .scalarValue: continue
                case .emptyInput: return true
                case .error: return false
                }
            }
        }
    }

    /// Delivers or queues `publish` for every matching session; returns how many matched.
    /// Deliveries that must become durable first are held in `batch` and go out when its
    /// commit completes.
    /// `shares`: which shared subscriptions (`$share/G/F`) get a copy (see `ShareCopies`).
    func route(
        _ publish: MQTTPublish, from publisher: SessionState?, _ batch: inout StoreBatch, shares: ShareCopies = .local
    ) -> Int {
        tree.match(publish.topicName, publisher: publisher, into: &matches)
        defer { matches.removeAll(keepingCapacity: true) }
        guard !matches.isEmpty else { return 0 }
        switch shares {
        case .local:
            // In a cluster, QoS 1 and 2 reach shared subscriptions through the cluster link.
            if clusterLink != nil, publish.qos != .atMostOnce { matches.removeAll { $0.share != nil } }
        case .none: matches.removeAll { $0.share != nil }
        case .only(let key): matches.removeAll { $0.share?.key != key }
        }
        var message: Message?
        let now = clock()
        // What every copy starts from: no Topic Alias, no identifiers, no DUP.
        var base = publish
        clean(&base.properties)
        base.packetIdentifier = nil
        base.duplicate = false
        for match in matches {
            let session = match.session
            let qos = min(publish.qos, match.qos)
            let retain = publish.retain && match.retainAsPublished
            if qos == .atMostOnce {
                // Not queued for detached sessions (optional in 4.6; Mosquitto does not either).
                guard session.sink != nil else { continue }
                var packet = base
                packet.qos = .atMostOnce
                packet.retain = retain
                if session.version == .mqtt5, !match.identifiers.isEmpty {
                    packet.properties.subscriptionIdentifiers = match.identifiers
                }
                if let maximum = session.maximumPacketSize,
                    (try? MQTTEncoder(protocolVersion: session.version).encodedSize(of: .publish(packet))) ?? Int.max > maximum
                {
                    session.discarded += 1
                    droppedTooLarge += 1
                    continue
                }
                post(session, .publish(packet))
                continue
            }
            if session.sink == nil && !session.persistent { continue }
            let shared: Message
            if let message {
                shared = message
            } else {
                var held = base
                held.payload = Message.compacted(held.payload)
                shared = Message(publish: held, receivedAt: now)
                message = shared
            }
            sequence += 1
            let delivery = OutboundMessage(
                sequence: sequence, message: shared, qos: qos, retain: retain,
                identifiers: match.identifiers, share: match.share?.key)
            if session.persistent, store != nil { storeAndHold(delivery, for: session, &batch) }
            if let packet = enqueue(delivery, session, &batch) { post(session, packet) }
        }
        return matches.count
    }

    func clean(_ properties: inout MQTTProperties) {
        guard !properties.isEmpty else { return }
        properties.topicAlias = nil
        if properties.contains(where: { if case .subscriptionIdentifier = $0 { true } else { false } }) {
            properties.subscriptionIdentifiers = []
        }
    }
}

/// Which shared subscriptions a routed message goes to (one member each).
enum ShareCopies {
    /// A message published on this node: every matching share, except, in a cluster, for QoS 1
    /// and 2 (those come back through the share's own cluster consumer: one member in the
    /// whole cluster); QoS 0 goes to this node's members.
    case local
    /// None: a message from another node (its shares are served by their cluster consumers,
    /// or, for QoS 0, by the publishing node).
    case none
    /// The one share `$share/G/F` whose cluster consumer delivered the message.
    case only(String)
}
