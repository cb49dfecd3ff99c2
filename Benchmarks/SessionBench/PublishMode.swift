import MQTTCodec
import NIOCore

// MARK: - publish

/// Message throughput through the broker. Subscribers connect first (clean start) and
/// subscribe to `ROOT/PREFIX/+` at --qos; then publishers connect and, for --seconds, each
/// publishes to `ROOT/PREFIX/USER` (USER: its own authentication name), as fast as --inflight
/// (QoS 1: PUBLISHes unacknowledged), --max-ahead (messages not yet seen by every subscriber,
/// shared out among the publishers) and --rate allow. fan-in: --conns publishers, one
/// subscriber; fan-out: one publisher, --conns subscribers, each getting every message;
/// per-topic: --conns of each, subscriber i subscribing to `ROOT/PREFIX/USER/pN` of publisher
/// N = i mod P only (publishers then publish there). --publishers and --subscribers set the
/// counts of any shape.
///
/// Every payload starts with the publisher's number, a sequence number and the send time, so
/// each subscriber counts what it got from whom (and how late) and what never came: after
/// --seconds the run waits until every message that should arrive did (QoS 1: every
/// acknowledged one; QoS 0: every one sent), or until nothing arrived for --drain-ms.
/// The measured window runs from the first PUBLISH to the last delivery (read on the 1 ms
/// tick after it); broker and generator CPU are read over it.
final class PublishMode: LoadMode, @unchecked Sendable {
    private final class Publisher {
        let index: Int
        let connection: BenchConnection
        /// One encoded PUBLISH; each message patches its packet identifier and payload head.
        let template: [UInt8]
        let identifierOffset: Int
        let payloadOffset: Int
        var up = false
        var settled = false
        /// Sequence number of the last message sent (the first is 1).
        var sent: UInt64 = 0
        /// QoS 1: PUBACKs with Success.
        var acked = 0
        var inFlight = 0
        /// QoS 1: the smaller of --inflight and the broker's Receive Maximum.
        var window = 0
        var outstanding: [Bool] = []
        var nextIdentifier: UInt16 = 0
        /// The lowest sequence number every live subscriber has seen (refreshed when needed).
        var seenByAll: UInt64 = 0

        init(index: Int, connection: BenchConnection, template: [UInt8], identifierOffset: Int, payloadOffset: Int) {
            self.index = index
            self.connection = connection
            self.template = template
            self.identifierOffset = identifierOffset
            self.payloadOffset = payloadOffset
        }
    }

    private final class Subscriber {
        let index: Int
        let connection: BenchConnection
        var settled = false
        /// Subscribed and not lost since.
        var live = false
        /// Still live when the run ended: what it did not get counts as lost.
        var stayed = false
        /// The last sequence number from each publisher.
        var lastSeen: [UInt64]
        var delivered = 0
        var duplicates = 0
        /// The one publisher it hears (per-topic); nil: every publisher.
        let only: Int?

        init(index: Int, connection: BenchConnection, publishers: Int, only: Int?) {
            self.index = index
            self.connection = connection
            self.lastSeen = Array(repeating: 0, count: publishers)
            self.only = only
        }

        func hears(_ publisher: Int) -> Bool { only == nil || only == publisher }
    }

    private enum Stage { case subscribing, connectingPublishers, publishing, draining, closing, done }

    /// Payload head: publisher number (4 bytes), sequence number (8), send time in ns (8).
    static let payloadHead = 20
    /// Messages one publisher may add in one tick (bounds a tick's work).
    private static let burst = 1024
    private static let tickNanoseconds: Int64 = 1_000_000

    private let options: PublishOptions
    private let qos: MQTTQoS
    private var stage = Stage.subscribing
    private var publishers: [Publisher] = []
    private var subscribers: [Subscriber] = []
    private var publisherCount = 0
    private var subscriberCount = 0
    private var users = 0
    private var filter = ""
    /// Each publisher's share of --max-ahead (0: no limit).
    private var aheadLimit: UInt64 = 0
    private var settledCount = 0
    private var stats = LatencyStats()
    private var totalSent = 0
    private var foreign = 0
    private var startSample: CPUSample?
    private var endSample: CPUSample?
    private var publishEndSample: CPUSample?
    private var stopAt: UInt64 = 0
    private var lastActivityAt: UInt64 = 0
    /// Deliveries and acknowledgements so far, to see whether a drain tick found any.
    private var activity = 0
    private var activityAtLastTick = 0
    private var activeSample: CPUSample?
    private var complete = false
    private var remainingToClose = 0

    init(engine: LoadEngine, load: LoadOptions, publish: PublishOptions, pid: Int32?, promise: EventLoopPromise<Report>) {
        self.options = publish
        self.qos = publish.qosLevel
        super.init(engine: engine, load: load, pid: pid, promise: promise)
    }

    private func user(_ n: Int) -> String { prefix + "u" + String(n % users) }

    /// Where publisher `n` publishes: `ROOT/PREFIX/USER`, per-topic `ROOT/PREFIX/USER/pN`
    /// (users are shared by several connections; the topic is the publisher's alone).
    private func topic(of n: Int) -> String {
        options.topicRoot + "/" + prefix + "/" + user(n) + (options.shape == .perTopic ? "/p" + String(n) : "")
    }

    func start() {
        publisherCount = options.publishers ?? (options.shape == .fanOut ? 1 : load.conns)
        subscriberCount = options.subscribers ?? (options.shape == .fanIn ? 1 : load.conns)
        users = load.userCount(forLiveSessions: publisherCount + subscriberCount)
        if options.maxAhead > 0 { aheadLimit = UInt64(max(1, options.maxAhead / publisherCount)) }
        filter = options.topicRoot + "/" + prefix + (options.shape == .perTopic ? "/USER/pN" : "/+")
        for index in 0..<subscriberCount {
            // Publishers take users 0, 1, ...; subscribers the ones after them.
            let connection = BenchConnection(
                connect: makeConnect(
                    session: prefix + "s" + String(index), user: user(publisherCount + index),
                    cleanStart: !(options.persistentSubscribers && version != .mqtt5),
                    expiry: options.persistentSubscribers ? 3600 : 0),
                tag: index)
            // A QoS 0 subscriber sends nothing on its own; the keep-alive is 60 s.
            connection.pingInterval = 20_000_000_000
            let only = options.shape == .perTopic ? index % publisherCount : nil
            let subscriber = Subscriber(index: index, connection: connection, publishers: publisherCount, only: only)
            subscribers.append(subscriber)
            let filter = only.map { topic(of: $0) } ?? filter
            connection.onConnAck = { [self] connection in
                guard connection.connAck?.reasonCode == .success else { return }
                let subscription = MQTTSubscription(topicFilter: filter, options: MQTTSubscriptionOptions(qos: qos))
                connection.send(.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [subscription])))
            }
            connection.onPacket = { [self] _, packet in received(packet, by: subscriber) }
            connection.onClose = { [self] connection in closed(subscriber: subscriber, connection) }
            // A cluster: subscribers spread over the nodes, round robin from the publishers' node.
            let ports = [engine.address.port ?? 0] + ((try? options.otherPorts()) ?? [])
            var target = engine.address
            if ports.count > 1 { target.port = ports[index % ports.count] }
            engine.open(connection, at: target)
        }
        // CONNACK timeouts are the engine's; a SUBACK that never comes is this one.
        engine.loop.scheduleTask(in: .milliseconds(Int64(load.timeoutMs) * 2)) { [self] in
            guard stage == .subscribing else { return }
            for subscriber in subscribers where !subscriber.settled {
                stats.error("sub_suback_timeout")
                settle(subscriber)
                subscriber.connection.close()
            }
        }
    }

    // MARK: Setup

    private func settle(_ subscriber: Subscriber) {
        guard !subscriber.settled else { return }
        subscriber.settled = true
        settledCount += 1
        if settledCount == subscriberCount { engine.loop.execute { self.openPublishers() } }
    }

    private func openPublishers() {
        guard stage == .subscribing else { return }
        stage = .connectingPublishers
        settledCount = 0
        guard !engine.aborted, subscribers.contains(where: \.live) else { return finishRun() }
        var payload = ByteBuffer()
        payload.writeRepeatingByte(0, count: options.payloadBytes)
        for index in 0..<publisherCount {
            let name = user(index)
            let connection = BenchConnection(
                connect: makeConnect(session: prefix + "p" + String(index), user: name, cleanStart: true), tag: index)
            // The template: an identifier of 0xABCD to find again (QoS 1), an empty property
            // list (5.0: one byte) between it and the payload, which ends the packet.
            let publish = MQTTPublish(
                topicName: topic(of: index), payload: payload, qos: qos,
                packetIdentifier: qos == .atMostOnce ? nil : 0xABCD)
            var encoded = ByteBuffer()
            do {
                _ = try engine.encoder.encode(.publish(publish), into: &encoded)
            } catch {
                promise.fail(error)
                return
            }
            let template = Array(encoded.readableBytesView)
            let payloadOffset = template.count - options.payloadBytes
            let identifierOffset = payloadOffset - (version == .mqtt5 ? 1 : 0) - 2
            precondition(qos == .atMostOnce || (template[identifierOffset] == 0xAB && template[identifierOffset + 1] == 0xCD))
            let publisher = Publisher(
                index: index, connection: connection, template: template, identifierOffset: identifierOffset,
                payloadOffset: payloadOffset)
            if qos != .atMostOnce { publisher.outstanding = Array(repeating: false, count: 65_536) }
            publishers.append(publisher)
            connection.onConnAck = { [self] connection in
                guard let ack = connection.connAck, ack.reasonCode == .success else { return }
                publisher.up = true
                publisher.window = min(options.inflight, Int(ack.properties.receiveMaximum ?? 65_535))
                settle(publisher)
            }
            connection.onPacket = { [self] _, packet in received(packet, by: publisher) }
            connection.onWritable = { [self] connection in
                guard stage == .publishing else { return }
                pump(publisher, now: monotonicNanoseconds())
                connection.flushQueued()
            }
            connection.onClose = { [self] connection in closed(publisher: publisher, connection) }
            engine.open(connection)
        }
    }

    private func settle(_ publisher: Publisher) {
        guard !publisher.settled else { return }
        publisher.settled = true
        settledCount += 1
        if settledCount == publisherCount { engine.loop.execute { self.startPublishing() } }
    }

    private func startPublishing() {
        guard stage == .connectingPublishers else { return }
        guard !engine.aborted, publishers.contains(where: \.up), subscribers.contains(where: \.live) else { return finishRun() }
        stage = .publishing
        startSample = CPUSample(pid: pid)
        stopAt = startSample!.at &+ secondsInNanoseconds
        tick()
    }

    // MARK: Publishing

    /// Every millisecond: publishers send what they may; after --seconds, the drain.
    private func tick() {
        let now = monotonicNanoseconds()
        switch stage {
        case .publishing:
            if engine.aborted || now >= stopAt || totalSent >= (load.total ?? Int.max) {
                beginDrain(now)
            } else {
                for publisher in publishers where publisher.up {
                    pump(publisher, now: now)
                    publisher.connection.flushQueued()
                }
            }
        case .draining:
            drainTick(now)
        default:
            return
        }
        guard stage == .publishing || stage == .draining else { return }
        engine.loop.scheduleTask(in: .nanoseconds(Self.tickNanoseconds)) { self.tick() }
    }

    /// Adds to the publisher's queued bytes every message it may send now; the caller flushes
    /// (the tick, or the end of the read that brought PUBACKs).
    private func pump(_ publisher: Publisher, now: UInt64) {
        guard stage == .publishing, publisher.up else { return }
        var budget = Self.burst
        if options.rate > 0, let start = startSample {
            let due = options.rate / Double(publisherCount) * Double(now &- start.at) / 1e9
            budget = min(budget, max(0, Int(due.rounded(.up)) - Int(publisher.sent)))
        }
        budget = min(budget, (load.total ?? Int.max) - totalSent)
        let connection = publisher.connection
        while budget > 0 {
            if qos != .atMostOnce, publisher.inFlight >= publisher.window { break }
            if aheadLimit > 0, publisher.sent &- publisher.seenByAll >= aheadLimit {
                publisher.seenByAll = seenByAll(publisher.index)
                if publisher.sent &- publisher.seenByAll >= aheadLimit { break }
            }
            if !connection.isWritable { break }
            let at = connection.queued.writerIndex
            connection.queued.writeBytes(publisher.template)
            if qos != .atMostOnce {
                var identifier = publisher.nextIdentifier
                repeat { identifier &+= 1 } while identifier == 0 || publisher.outstanding[Int(identifier)]
                publisher.nextIdentifier = identifier
                publisher.outstanding[Int(identifier)] = true
                publisher.inFlight += 1
                connection.queued.setInteger(identifier, at: at + publisher.identifierOffset)
            }
            publisher.sent += 1
            let head = at + publisher.payloadOffset
            connection.queued.setInteger(UInt32(publisher.index), at: head)
            connection.queued.setInteger(publisher.sent, at: head + 4)
            connection.queued.setInteger(now, at: head + 12)
            totalSent += 1
            budget -= 1
        }
    }

    /// The lowest sequence number of `publisher` that every live subscriber has seen.
    private func seenByAll(_ publisher: Int) -> UInt64 {
        var lowest = UInt64.max
        for subscriber in subscribers where subscriber.live && subscriber.hears(publisher) {
            lowest = min(lowest, subscriber.lastSeen[publisher])
        }
        return lowest == .max ? publishers[publisher].sent : lowest
    }

    private func received(_ packet: MQTTPacket, by publisher: Publisher) {
        let response: MQTTPublishResponse
        switch packet {
        case .puback(let ack) where qos == .atLeastOnce:
            response = ack
        case .pubrec(let received) where qos == .exactlyOnce:
            // QoS 2, first half: released at once; the message leaves the window at PUBCOMP.
            guard publisher.outstanding[Int(received.packetIdentifier)] else { return stats.error("pub_unexpected_pubrec") }
            if received.reasonCode.rawValue >= 0x80 {
                response = received
            } else {
                publisher.connection.queue(.pubrel(MQTTPublishResponse(packetIdentifier: received.packetIdentifier)))
                return
            }
        case .pubcomp(let complete) where qos == .exactlyOnce:
            response = complete
        default:
            return
        }
        let identifier = Int(response.packetIdentifier)
        guard qos != .atMostOnce, publisher.outstanding[identifier] else { return stats.error("pub_unexpected_ack") }
        publisher.outstanding[identifier] = false
        publisher.inFlight -= 1
        activity += 1
        if response.reasonCode == .success {
            publisher.acked += 1
        } else {
            stats.error("puback_0x" + hex(response.reasonCode.rawValue))
        }
        // Sent with the rest of this read's answers (BenchConnection flushes at read complete).
        if stage == .publishing { pump(publisher, now: monotonicNanoseconds()) }
    }

    private func received(_ packet: MQTTPacket, by subscriber: Subscriber) {
        switch packet {
        case .suback(let ack):
            guard stage == .subscribing, !subscriber.settled else { return }
            let code = ack.reasonCodes.first ?? .unspecifiedError
            if code.rawValue <= 2 {
                if code.rawValue < qos.rawValue { stats.error("sub_granted_qos" + String(code.rawValue)) }
                subscriber.live = true
            } else {
                stats.error("suback_0x" + hex(code.rawValue))
                subscriber.connection.disconnect()
            }
            settle(subscriber)
        case .pubrel(let release):
            subscriber.connection.queue(.pubcomp(MQTTPublishResponse(packetIdentifier: release.packetIdentifier)))
        case .publish(let message):
            if let identifier = message.packetIdentifier {
                let response = MQTTPublishResponse(packetIdentifier: identifier)
                subscriber.connection.queue(message.qos == .exactlyOnce ? .pubrec(response) : .puback(response))
            }
            let payload = message.payload
            guard payload.readableBytes >= Self.payloadHead,
                let index = payload.getInteger(at: payload.readerIndex, as: UInt32.self), Int(index) < publisherCount,
                let sequence = payload.getInteger(at: payload.readerIndex + 4, as: UInt64.self),
                let sentAt = payload.getInteger(at: payload.readerIndex + 12, as: UInt64.self),
                subscriber.hears(Int(index))
            else {
                foreign += 1
                return
            }
            let now = monotonicNanoseconds()
            activity += 1
            lastActivityAt = now
            if sequence > subscriber.lastSeen[Int(index)] {
                subscriber.lastSeen[Int(index)] = sequence
                subscriber.delivered += 1
                stats.success(nanoseconds: now &- sentAt)
            } else {
                subscriber.duplicates += 1
            }
        default:
            break
        }
    }

    // MARK: Losing connections

    private func lostReason(_ connection: BenchConnection) -> String {
        if let code = connection.serverDisconnect { return "disconnect_0x" + hex(code.rawValue) }
        return connection.failure ?? "closed_by_broker"
    }

    private func closed(subscriber: Subscriber, _ connection: BenchConnection) {
        let wasLive = subscriber.live
        subscriber.live = false
        switch stage {
        case .subscribing:
            if !subscriber.settled {
                stats.error("sub_" + (judge(connection) ?? "closed_before_suback"))
                settle(subscriber)
            } else if wasLive {
                stats.error("sub_lost_" + lostReason(connection))
            }
        case .connectingPublishers, .publishing, .draining:
            if wasLive { stats.error("sub_lost_" + lostReason(connection)) }
        case .closing:
            closedWhileClosing()
        case .done:
            break
        }
    }

    private func closed(publisher: Publisher, _ connection: BenchConnection) {
        let wasUp = publisher.up
        publisher.up = false
        switch stage {
        case .subscribing, .connectingPublishers:
            if !publisher.settled {
                stats.error("pub_" + (judge(connection) ?? "closed_before_connack"))
                settle(publisher)
            } else if wasUp {
                stats.error("pub_lost_" + lostReason(connection))
            }
        case .publishing, .draining:
            if wasUp { stats.error("pub_lost_" + lostReason(connection)) }
        case .closing:
            closedWhileClosing()
        case .done:
            break
        }
    }

    // MARK: Drain and end

    /// What a live subscriber should have got: every message acknowledged (QoS 1) or sent
    /// (QoS 0) by the publishers it hears.
    private func expected(by subscriber: Subscriber) -> Int {
        publishers.reduce(0) { sum, publisher in
            guard subscriber.hears(publisher.index) else { return sum }
            return sum + (qos == .atMostOnce ? Int(publisher.sent) : publisher.acked)
        }
    }

    /// What the subscribers together should have got.
    private var expectedInAll: Int { subscribers.reduce(0) { $0 + expected(by: $1) } }

    private func beginDrain(_ now: UInt64) {
        stage = .draining
        publishEndSample = CPUSample(pid: pid)
        lastActivityAt = max(lastActivityAt, now)
        activityAtLastTick = activity
        activeSample = publishEndSample
        drainTick(now)
    }

    private func drainTick(_ now: UInt64) {
        let acknowledged = qos == .atMostOnce || !publishers.contains { $0.up && $0.inFlight > 0 }
        if acknowledged, !subscribers.contains(where: { $0.live && $0.delivered < expected(by: $0) }) {
            complete = true
            endSample = CPUSample(pid: pid)
            return finishRun()
        }
        if activity != activityAtLastTick {
            // The first sample after the latest delivery or PUBACK: the end of the window if
            // nothing more comes.
            activityAtLastTick = activity
            activeSample = CPUSample(pid: pid)
        }
        if engine.aborted || now &- lastActivityAt > UInt64(options.drainMs) * 1_000_000 {
            endSample = activeSample
            finishRun()
        }
    }

    /// Ends every connection (DISCONNECT, then wait for the close), then reports.
    private func finishRun() {
        guard stage != .closing, stage != .done else { return }
        stage = .closing
        for subscriber in subscribers { subscriber.stayed = subscriber.live }
        let open = publishers.map(\.connection) + subscribers.map(\.connection)
        let remaining = open.filter { $0.phase != .closed }
        remainingToClose = remaining.count
        if remainingToClose == 0 { return report() }
        for connection in remaining {
            connection.flushQueued()
            connection.disconnect()
        }
    }

    private func closedWhileClosing() {
        remainingToClose -= 1
        if remainingToClose == 0 { report() }
    }

    private func report() {
        guard stage != .done else { return }
        stage = .done
        var delivered = 0, duplicates = 0, lost = 0
        for subscriber in subscribers {
            delivered += subscriber.delivered
            duplicates += subscriber.duplicates
            // A subscriber lost during the run is an error already; what it missed is not counted as lost.
            if subscriber.stayed { lost += max(0, expected(by: subscriber) - subscriber.delivered) }
        }
        var report = Report(mode: "publish")
        let start = startSample, end = endSample ?? startSample
        let elapsed = start.flatMap { start in end.map { $0.seconds(since: start) } } ?? 0
        let rate = Double(delivered) / max(elapsed, 1e-9)
        let ownCPU = start.flatMap { start in end.map { $0.ownMicroseconds(since: start) } } ?? 0
        let brokerCPU = start.flatMap { start in end.flatMap { $0.brokerMicroseconds(since: start) } }
        report.fields = [
            .int("published", totalSent), .int("delivered", delivered), .int("lost", lost), .int("duplicates", duplicates),
            .int("errors", stats.errorCount), .rate("rate", start == nil ? 0 : rate),
        ] + latencyFields(stats) + [.number("bench_cpu_pct", ownCPU / 1e4 / max(elapsed, 1e-9))]
        if let brokerCPU {
            report.brokerCPUPerCycle = brokerCPU / Double(max(delivered, 1))
            report.fields.append(.number("cpu_us_per_msg", report.brokerCPUPerCycle!, digits: 2))
        }
        let publishSeconds = start.flatMap { start in publishEndSample.map { $0.seconds(since: start) } } ?? 0
        report.details = [
            .int("qos", Int(qos.rawValue)), .string("shape", options.shape.rawValue),
            .int("persistent_subscribers", options.persistentSubscribers ? 1 : 0),
            .int("publishers", publisherCount), .int("subscribers", subscriberCount), .int("proto", load.proto),
            .int("payload_bytes", options.payloadBytes), .int("inflight", options.inflight), .int("max_ahead", options.maxAhead),
            .number("rate_limit", options.rate), .number("seconds", load.seconds), .int("users", users),
            .string("prefix", prefix), .string("filter", filter),
            .number("elapsed_s", elapsed, digits: 3), .number("publish_s", publishSeconds, digits: 3),
            .rate("publish_rate", Double(totalSent) / max(publishSeconds, 1e-9)),
            .int("acked", publishers.reduce(0) { $0 + $1.acked }), .int("expected_deliveries", expectedInAll),
            .int("drained", complete ? 1 : 0),
        ]
        if let brokerCPU {
            report.details.append(.number("broker_cpu_us", brokerCPU, digits: 0))
            report.details.append(.number("broker_cpu_pct", brokerCPU / 1e4 / max(elapsed, 1e-9)))
            report.details.append(.number("broker_cpu_us_per_publish", brokerCPU / Double(max(totalSent, 1)), digits: 2))
        }
        report.details.append(.number("bench_cpu_us", ownCPU, digits: 0))
        report.details.append(.number("bench_cpu_us_per_msg", ownCPU / Double(max(delivered, 1)), digits: 2))
        report.details.append(.int("foreign", foreign))
        report.details.append(.int("late_closes", engine.lateCloses))
        report.errors = stats.errors
        report.rate = start == nil ? 0 : rate
        report.p99 = stats.percentile(99)
        promise.succeed(report)
    }
}
