import ArgumentParser
import MQTTCodec
import NIOCore

// MARK: - offline-queue

/// What `offline-queue` sends.
struct OfflineQueueOptions: ParsableArguments {
    @Option(help: "QoS 1 messages queued for the offline session.")
    var messages: Int = 100_000

    @Option(help: "PUBLISHes the publisher may have unacknowledged.")
    var inflight: Int = 32

    @Option(help: "Payload bytes of each message (at least 8: its sequence number).")
    var payloadBytes: Int = 64

    @Option(help: "Milliseconds with nothing arriving (PUBACK or delivery) before the run gives up; what is missing then counts as lost.")
    var stallMs: Int = 10_000

    func validate() throws {
        guard (1...10_000_000).contains(messages) else {
            throw ValidationError("--messages must be between 1 and 10000000, got \(messages)")
        }
        guard (1...65_535).contains(inflight) else { throw ValidationError("--inflight must be between 1 and 65535, got \(inflight)") }
        guard (8...65_536).contains(payloadBytes) else {
            throw ValidationError("--payload-bytes must be between 8 and 65536, got \(payloadBytes)")
        }
        guard (100...600_000).contains(stallMs) else { throw ValidationError("--stall-ms must be between 100 and 600000, got \(stallMs)") }
    }
}

/// A persistent session's queue, filled while it is offline and drained when it comes back:
/// the subscriber connects (a session that outlives its connection: 5.0 expiry 1 h, 3.1.1
/// clean session 0), subscribes to one topic at QoS 1 and disconnects; a publisher then
/// publishes --messages QoS 1 messages there (at most --inflight unacknowledged), each
/// acknowledged once the broker holds it for the offline session; then the subscriber comes
/// back (session present = 1) and receives them all, acknowledging each.
///
/// Two rates: in (messages acknowledged to the publisher per second, first PUBLISH to last
/// PUBACK) and out (messages delivered per second, from the resuming CONNECT to the last
/// delivery), each with the broker's CPU per message (--pid) and the generator's own share
/// of a core. A broker that drops queued messages (a queue limit) shows them as lost.
final class OfflineQueueMode: LoadMode, @unchecked Sendable {
    private let options: OfflineQueueOptions
    private var stats = LatencyStats()
    private var session = ""
    private var topic = ""
    private var publisher: BenchConnection?
    private var sent = 0
    private var acked = 0
    private var inFlight = 0
    private var nextIdentifier: UInt16 = 0
    private var outstanding = [Bool](repeating: false, count: 65_536)
    private var payload = ByteBuffer()
    private var delivered = 0
    private var duplicates = 0
    private var reordered = 0
    private var lastSequence: UInt64 = 0
    private var seen: [Bool] = []
    private var sessionPresent = false
    private var inStart: CPUSample?
    private var inEnd: CPUSample?
    private var outStart: CPUSample?
    private var outEnd: CPUSample?
    private var lastActivity: UInt64 = 0
    private var finished = false

    init(engine: LoadEngine, load: LoadOptions, options: OfflineQueueOptions, pid: Int32?, promise: EventLoopPromise<Report>) {
        self.options = options
        super.init(engine: engine, load: load, pid: pid, promise: promise)
    }

    private var user: String { prefix + "u0" }

    private func subscriberConnect(resuming: Bool) -> MQTTConnect {
        // 5.0: a session that lives an hour after its connection; 3.1.1: clean session 0.
        makeConnect(session: session, user: user, cleanStart: version == .mqtt5 ? !resuming : false, expiry: 3600)
    }

    func start() {
        session = prefix + "q"
        topic = "bench/" + prefix + "/queue"
        seen = Array(repeating: false, count: options.messages + 1)
        payload.writeRepeatingByte(0, count: options.payloadBytes)
        let subscriber = BenchConnection(connect: subscriberConnect(resuming: false), tag: 0)
        subscriber.onConnAck = { [self] connection in
            guard connection.connAck?.reasonCode == .success else { return fail("sub_connack") }
            let subscription = MQTTSubscription(topicFilter: topic, options: MQTTSubscriptionOptions(qos: .atLeastOnce))
            connection.send(.subscribe(MQTTSubscribe(packetIdentifier: 1, subscriptions: [subscription])))
        }
        subscriber.onPacket = { [self] connection, packet in
            guard case .suback(let ack) = packet else { return }
            guard ack.reasonCodes.first == .grantedQoS1 else { return fail("suback_0x" + hex(ack.reasonCodes.first?.rawValue ?? 0)) }
            connection.disconnect()
        }
        subscriber.onClose = { [self] connection in
            guard !finished else { return }
            if connection.connAck?.reasonCode != .success || connection.failure != nil { return fail("sub_" + (judge(connection) ?? "closed")) }
            openPublisher()
        }
        engine.open(subscriber)
    }

    // MARK: In: the publisher fills the queue

    private func openPublisher() {
        let connection = BenchConnection(connect: makeConnect(session: prefix + "p", user: prefix + "u1", cleanStart: true), tag: 1)
        publisher = connection
        connection.onConnAck = { [self] connection in
            guard connection.connAck?.reasonCode == .success else { return fail("pub_connack") }
            inStart = CPUSample(pid: pid)
            lastActivity = inStart!.at
            scheduleWatch()
            pump(connection)
        }
        connection.onPacket = { [self] connection, packet in
            guard case .puback(let response) = packet else { return }
            let identifier = Int(response.packetIdentifier)
            guard outstanding[identifier] else { return stats.error("unexpected_puback") }
            outstanding[identifier] = false
            inFlight -= 1
            lastActivity = monotonicNanoseconds()
            if response.reasonCode == .success { acked += 1 } else { stats.error("puback_0x" + hex(response.reasonCode.rawValue)) }
            if sent == options.messages, inFlight == 0 {
                inEnd = CPUSample(pid: pid)
                connection.disconnect()
                resume()
            } else {
                pump(connection)
            }
        }
        connection.onWritable = { [self] connection in pump(connection) }
        connection.onClose = { [self] connection in
            if inEnd == nil, !finished { fail("pub_" + (judge(connection) ?? "closed")) }
        }
        engine.open(connection)
    }

    private func pump(_ connection: BenchConnection) {
        while sent < options.messages, inFlight < options.inflight, connection.isWritable {
            var identifier = nextIdentifier
            repeat { identifier &+= 1 } while identifier == 0 || outstanding[Int(identifier)]
            nextIdentifier = identifier
            outstanding[Int(identifier)] = true
            inFlight += 1
            sent += 1
            var body = payload
            body.setInteger(UInt64(sent), at: body.readerIndex)
            connection.queue(.publish(MQTTPublish(
                topicName: topic, payload: body, qos: .atLeastOnce, packetIdentifier: identifier)))
        }
        connection.flushQueued()
    }

    // MARK: Out: the session comes back and drains it

    private func resume() {
        let subscriber = BenchConnection(connect: subscriberConnect(resuming: true), tag: 2)
        outStart = CPUSample(pid: pid)
        subscriber.onConnAck = { [self] connection in
            guard let ack = connection.connAck, ack.reasonCode == .success else { return fail("resume_connack") }
            sessionPresent = ack.sessionPresent
            if acked == 0 { finish() }
        }
        subscriber.onPacket = { [self] connection, packet in
            guard case .publish(let message) = packet else { return }
            if let identifier = message.packetIdentifier {
                connection.queue(.puback(MQTTPublishResponse(packetIdentifier: identifier)))
            }
            lastActivity = monotonicNanoseconds()
            guard let sequence = message.payload.getInteger(at: message.payload.readerIndex, as: UInt64.self),
                sequence >= 1, sequence <= UInt64(options.messages)
            else { return stats.error("foreign_message") }
            if seen[Int(sequence)] {
                duplicates += 1
                return
            }
            seen[Int(sequence)] = true
            if sequence < lastSequence { reordered += 1 }
            lastSequence = sequence
            delivered += 1
            if delivered >= acked {
                connection.flushQueued()
                finish()
            }
        }
        subscriber.onClose = { [self] connection in
            if !finished { fail("resume_" + (judge(connection) ?? "closed")) }
        }
        engine.open(subscriber)
    }

    /// Gives up once nothing has arrived for --stall-ms.
    private func scheduleWatch() {
        engine.loop.scheduleTask(in: .milliseconds(200)) { [self] in
            guard !finished else { return }
            if monotonicNanoseconds() &- lastActivity > UInt64(options.stallMs) * 1_000_000 {
                stats.error("stalled")
                finish()
            } else {
                scheduleWatch()
            }
        }
    }

    private func fail(_ reason: String) {
        stats.error(reason)
        finish()
    }

    // MARK: Report

    private func finish() {
        guard !finished else { return }
        finished = true
        if outStart != nil { outEnd = CPUSample(pid: pid) }
        var report = Report(mode: "offline-queue")
        let inSeconds = inStart.flatMap { start in inEnd.map { $0.seconds(since: start) } } ?? 0
        let outSeconds = outStart.flatMap { start in outEnd.map { $0.seconds(since: start) } } ?? 0
        let inRate = Double(acked) / max(inSeconds, 1e-9)
        let outRate = Double(delivered) / max(outSeconds, 1e-9)
        report.fields = [
            .int("queued", acked), .int("delivered", delivered), .int("lost", max(0, acked - delivered)),
            .int("duplicates", duplicates), .int("reordered", reordered), .int("errors", stats.errorCount),
            .rate("in_rate", inSeconds > 0 ? inRate : 0), .rate("out_rate", outSeconds > 0 ? outRate : 0),
        ]
        func cpu(_ start: CPUSample?, _ end: CPUSample?, _ count: Int, _ key: String) {
            guard let start, let end else { return }
            if let broker = end.brokerMicroseconds(since: start) {
                report.fields.append(.number("cpu_us_per_msg_" + key, broker / Double(max(count, 1)), digits: 2))
            }
            report.fields.append(.number("bench_cpu_pct_" + key, end.ownMicroseconds(since: start) / 1e4 / max(end.seconds(since: start), 1e-9)))
        }
        cpu(inStart, inEnd, acked, "in")
        cpu(outStart, outEnd, delivered, "out")
        report.details = [
            .int("proto", load.proto), .int("messages", options.messages), .int("inflight", options.inflight),
            .int("payload_bytes", options.payloadBytes), .string("prefix", prefix), .int("session_present", sessionPresent ? 1 : 0),
            .number("in_s", inSeconds, digits: 3), .number("out_s", outSeconds, digits: 3), .int("late_closes", engine.lateCloses),
        ]
        report.errors = stats.errors
        report.rate = outRate
        promise.succeed(report)
    }
}

struct OfflineQueueLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "offline-queue",
        abstract: "A persistent session offline while --messages QoS 1 messages are queued for it, then resumed and drained: both rates.",
        discussion: """
            Final line: offline-queue: queued=N delivered=D lost=L duplicates=X reordered=O \
            errors=E in_rate=R/s out_rate=R/s [cpu_us_per_msg_in=C] bench_cpu_pct_in=G \
            [cpu_us_per_msg_out=C] bench_cpu_pct_out=G. queued counts the PUBACKs the publisher \
            got; lost what the resumed session never got of them (a broker's queue limit drops \
            messages: raise it, custody --queue-max-messages, mosquitto max_queued_messages). \
            cpu_us_per_msg_* is the broker's CPU (--pid) per message, bench_cpu_pct_* this \
            generator's share of one core over each phase.
            """)
    @OptionGroup var target: TargetOptions
    @OptionGroup var load: LoadOptions
    @OptionGroup var queue: OfflineQueueOptions

    func validate() throws {
        _ = try BrokerAddress.resolve(host: target.host, port: target.port, allowRemote: load.allowRemote)
        guard load.threads == 1 else { throw ValidationError("--threads is for connect only, not offline-queue") }
    }

    func run() throws {
        let address = try BrokerAddress.resolve(host: target.host, port: target.port, allowRemote: load.allowRemote)
        raiseFileLimit()
        let engine = try LoadEngine(
            address: address, version: load.version, timeoutMilliseconds: load.timeoutMs,
            closeWaitMilliseconds: load.closeWaitMs)
        let hardLimit = Double(queue.messages) / 1000 + Double(queue.stallMs) / 1000 * 2 + 120
        let options = queue, pid = target.pid, load = self.load
        let report = try engine.run(hardLimitSeconds: hardLimit) { engine, promise in
            OfflineQueueMode(engine: engine, load: load, options: options, pid: pid, promise: promise).start()
        }
        report.print(json: load.json)
    }
}
