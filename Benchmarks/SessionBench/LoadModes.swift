import MQTTCodec
import NIOCore

/// What every mode needs: the engine, the load, the names, and CPU samples.
/// All of it is used on the engine's loop only (see `LoadEngine`).
class LoadMode: @unchecked Sendable {
    let engine: LoadEngine
    let load: LoadOptions
    let pid: Int32?
    let prefix: String
    let version: MQTTProtocolVersion
    let promise: EventLoopPromise<Report>
    /// `--token-file`'s token, read once.
    let token: String?

    init(engine: LoadEngine, load: LoadOptions, pid: Int32?, promise: EventLoopPromise<Report>) {
        self.token = try? load.token()
        self.engine = engine
        self.load = load
        self.pid = pid
        self.prefix = load.sessionPrefix()
        self.version = load.version
        self.promise = promise
    }

    var secondsInNanoseconds: UInt64 { UInt64(load.seconds * 1e9) }

    func makeConnect(session: String, user: String, cleanStart: Bool, expiry: UInt32 = 0, keepAlive: UInt16 = 60) -> MQTTConnect {
        var properties = MQTTProperties()
        if version == .mqtt5, expiry > 0 { properties.sessionExpiryInterval = expiry }
        var userName: String? = user
        var password = load.password.map { ByteBuffer(string: $0) }
        if let token {
            // The token names the client: no Username (a different one would be refused).
            userName = nil
            if let method = load.authMethod {
                properties.authenticationMethod = method
                properties.authenticationData = ByteBuffer(string: token)
            } else {
                // 3.1.1 has no password without a Username: an empty one (equal to no claim).
                userName = ""
                password = ByteBuffer(string: token)
            }
        }
        return MQTTConnect(
            protocolVersion: version, clientIdentifier: session, cleanStart: cleanStart, keepAlive: keepAlive,
            userName: userName, password: password, properties: properties)
    }

    /// nil if the connection got a successful CONNACK and ended cleanly, else why not.
    func judge(_ connection: BenchConnection) -> String? {
        if let ack = connection.connAck, ack.reasonCode != .success { return connAckErrorKey(ack.reasonCode, version) }
        if let failure = connection.failure { return failure }
        if connection.connAck == nil { return "closed_before_connack" }
        return nil
    }

    /// Settings and costs every report carries in its detail line.
    func commonDetails(start: CPUSample, end: CPUSample, cycles: Int, users: Int) -> [Field] {
        var details: [Field] = [
            .int("proto", load.proto), .int("conns", load.conns), .number("seconds", load.seconds),
            .int("users", users), .string("prefix", prefix),
            .number("elapsed_s", end.seconds(since: start), digits: 3),
        ]
        if let broker = end.brokerMicroseconds(since: start) {
            details.append(.number("broker_cpu_us", broker, digits: 0))
            details.append(.number("broker_cpu_pct", broker / 1e4 / max(end.seconds(since: start), 1e-9)))
        }
        details.append(.int("late_closes", engine.lateCloses))
        return details
    }

    /// The generator's own CPU beside the broker's, in the summary line: per cycle, and as a
    /// share of one core (near 100: the generator, not the broker, sets the rate).
    func generatorFields(start: CPUSample, end: CPUSample, cycles: Int) -> [Field] {
        let own = end.ownMicroseconds(since: start)
        return [
            .number("bench_cpu_us_per_cycle", own / Double(max(cycles, 1))),
            .number("bench_cpu_pct", own / 1e4 / max(end.seconds(since: start), 1e-9)),
        ]
    }

    func cpuPerCycle(start: CPUSample, end: CPUSample, cycles: Int) -> Double? {
        end.brokerMicroseconds(since: start).map { $0 / Double(max(cycles, 1)) }
    }
}

/// Runs connection cycles over a list of items with a fixed number of concurrent
/// connections: open, CONNECT, CONNACK, then `afterConnAck` (default: DISCONNECT), close;
/// each closed connection is judged and the slot starts the next item. Used by connect and
/// persistent.
final class CyclePass: @unchecked Sendable {
    let engine: LoadEngine
    private let count: Int
    private let concurrency: Int
    private let stopAt: UInt64
    /// Item number and slot (0..<concurrency) of the connection to make.
    private let make: (Int, Int) -> BenchConnection
    private let judge: (BenchConnection) -> String?
    private let done: (CyclePass) -> Void
    var stats = LatencyStats()
    /// Items whose cycle succeeded.
    var succeeded: [Int] = []
    private(set) var startSample: CPUSample?
    private(set) var endSample: CPUSample?
    private var nextItem = 0
    private var activeSlots = 0
    var truncated = false

    init(engine: LoadEngine, count: Int, concurrency: Int, seconds: Double,
         make: @escaping (Int, Int) -> BenchConnection, judge: @escaping (BenchConnection) -> String?,
         done: @escaping (CyclePass) -> Void) {
        self.engine = engine
        self.count = count
        self.concurrency = max(1, min(concurrency, count))
        self.stopAt = monotonicNanoseconds() &+ UInt64(seconds * 1e9)
        self.make = make
        self.judge = judge
        self.done = done
    }

    private var pid: Int32?

    func start(pid: Int32?) {
        self.pid = pid
        startSample = CPUSample(pid: pid)
        activeSlots = concurrency
        for slot in 0..<concurrency { next(slot: slot) }
    }

    private func next(slot: Int) {
        let outOfTime = engine.aborted || monotonicNanoseconds() >= stopAt
        guard nextItem < count, !outOfTime else {
            if nextItem < count { truncated = true }
            activeSlots -= 1
            if activeSlots == 0 { finish() }
            return
        }
        let item = nextItem
        nextItem += 1
        let connection = make(item, slot)
        connection.onConnAck = { connection in
            if connection.connAck?.reasonCode == .success { connection.disconnect() }
        }
        connection.onClose = { [self] connection in
            if let reason = judge(connection) {
                stats.error(reason)
            } else {
                stats.success(nanoseconds: connection.connectLatency)
                succeeded.append(item)
            }
            // Never start the next cycle from inside this one's callbacks (a refused connect
            // can fail synchronously, and the stack would grow with every cycle).
            engine.loop.execute { self.next(slot: slot) }
        }
        engine.open(connection)
    }

    private func finish() {
        endSample = CPUSample(pid: pid)
        done(self)
    }

    var elapsedSeconds: Double {
        guard let startSample, let endSample else { return 0 }
        return endSample.seconds(since: startSample)
    }

    var rate: Double { Double(stats.ok) / max(elapsedSeconds, 1e-9) }
}

// MARK: - connect

/// Each of `conns` connections loops: open TCP, CONNECT (unique session name, clean start),
/// CONNACK, DISCONNECT, close.
final class ConnectMode: LoadMode, @unchecked Sendable {
    func start() {
        // A user per group of at most five connection slots, fixed for the run: a slot's
        // previous session may still be releasing while its next one is claimed, so a user
        // holds at most 10 live sessions (Custody's default cap) however the cycles interleave.
        let users = load.users ?? max(8, (load.conns + 4) / 5)
        let pass = CyclePass(
            engine: engine, count: load.total ?? Int.max, concurrency: load.conns, seconds: load.seconds,
            make: { [self] n, slot in
                BenchConnection(
                    connect: makeConnect(session: prefix + "c" + String(n), user: prefix + "u" + String(slot % users), cleanStart: true),
                    tag: n)
            },
            judge: { [self] in judge($0) },
            done: { [self] pass in finish(pass, users: users) })
        pass.start(pid: pid)
    }

    private func finish(_ pass: CyclePass, users: Int) {
        guard let start = pass.startSample, let end = pass.endSample else { return }
        let part = ConnectPart(stats: pass.stats, start: start, end: end, lateCloses: engine.lateCloses, users: users)
        var report = connectReport([part], load: load, prefix: prefix)
        report.connectPart = part
        promise.succeed(report)
    }
}

// MARK: - persistent

/// Creates N persistent sessions (clean start 0; 5.0: Session Expiry Interval 3600), each
/// disconnected at once; then reconnects to each and requires session present = 1; then
/// (not measured) ends them with a clean start so the broker is left as it was.
final class PersistentMode: LoadMode, @unchecked Sendable {
    private var create: CyclePass?
    private var resume: CyclePass?
    private var sessions = 0
    private var users = 0
    private var cleanupErrors = 0

    func start() {
        sessions = load.total ?? 2000
        users = load.userCount(forLiveSessions: sessions)
        let pass = CyclePass(
            engine: engine, count: sessions, concurrency: load.conns, seconds: load.seconds,
            make: { [self] n, _ in connection(n, cleanStart: false) },
            judge: { [self] connection in
                if let reason = judge(connection) { return reason }
                return connection.connAck?.sessionPresent == true ? "session_present_on_create" : nil
            },
            done: { [self] _ in startResume() })
        create = pass
        pass.start(pid: pid)
    }

    private func connection(_ n: Int, cleanStart: Bool) -> BenchConnection {
        BenchConnection(
            connect: makeConnect(
                session: prefix + "p" + String(n), user: prefix + "u" + String(n % users), cleanStart: cleanStart,
                expiry: cleanStart ? 0 : 3600),
            tag: n)
    }

    private func startResume() {
        let created = create!.succeeded.sorted()
        let pass = CyclePass(
            engine: engine, count: created.count, concurrency: load.conns, seconds: load.seconds,
            make: { [self] i, _ in connection(created[i], cleanStart: false) },
            judge: { [self] connection in
                if let reason = judge(connection) { return reason }
                return connection.connAck?.sessionPresent == true ? nil : "session_not_present"
            },
            done: { [self] _ in startCleanup(created) })
        resume = pass
        pass.start(pid: pid)
    }

    private func startCleanup(_ created: [Int]) {
        let pass = CyclePass(
            engine: engine, count: created.count, concurrency: load.conns, seconds: load.seconds,
            make: { [self] i, _ in connection(created[i], cleanStart: true) },
            judge: { [self] in judge($0) },
            done: { [self] pass in
                cleanupErrors = pass.stats.errorCount
                finish()
            })
        pass.start(pid: nil)
    }

    private func finish() {
        guard let create, let resume, let start = create.startSample, let end = resume.endSample else { return }
        var errors = create.stats.errors
        for (key, count) in resume.stats.errors { errors["resume_" + key, default: 0] += count }
        let errorCount = create.stats.errorCount + resume.stats.errorCount
        let cycles = create.stats.cycles + resume.stats.cycles
        var report = Report(mode: "persistent")
        report.fields = [
            .int("sessions", sessions), .int("created", create.stats.ok), .int("resumed", resume.stats.ok),
            .int("errors", errorCount), .rate("create_rate", create.rate), .rate("resume_rate", resume.rate),
        ] + latencyFields(create.stats, prefix: "create_") + latencyFields(resume.stats, prefix: "resume_")
        report.brokerCPUPerCycle = cpuPerCycle(start: start, end: end, cycles: cycles)
        if let cpu = report.brokerCPUPerCycle { report.fields.append(.number("cpu_us_per_cycle", cpu)) }
        report.fields += generatorFields(start: start, end: end, cycles: cycles)
        report.details = commonDetails(start: start, end: end, cycles: cycles, users: users)
        report.details.append(.int("truncated", create.truncated || resume.truncated ? 1 : 0))
        report.details.append(.int("cleanup_errors", cleanupErrors))
        report.errors = errors
        report.rate = resume.rate
        report.p99 = resume.stats.percentile(99)
        promise.succeed(report)
    }
}

// MARK: - takeover

/// The same identity connects twice to one session name: the second CONNACK's latency, and
/// the time until the first connection is closed (5.0: after DISCONNECT 0x8E).
final class TakeoverMode: LoadMode, @unchecked Sendable {
    private var stats = LatencyStats()
    private var oldClose = LatencyStats()
    private var users = 0
    private var started = 0
    private var activeSlots = 0
    private var stopAt: UInt64 = 0
    private var startSample: CPUSample?
    private var takeoverDisconnects = 0

    func start() {
        users = load.userCount(forLiveSessions: load.conns * 2)
        startSample = CPUSample(pid: pid)
        stopAt = monotonicNanoseconds() &+ secondsInNanoseconds
        activeSlots = load.conns
        for _ in 0..<load.conns { next() }
    }

    private func next() {
        if engine.aborted || monotonicNanoseconds() >= stopAt || started >= (load.total ?? Int.max) {
            activeSlots -= 1
            if activeSlots == 0 { finish() }
            return
        }
        let n = started
        started += 1
        let connect = makeConnect(session: prefix + "t" + String(n), user: prefix + "u" + String(n % users), cleanStart: true)
        let first = BenchConnection(connect: connect, tag: n)
        let second = BenchConnection(connect: connect, tag: n)
        var closed = 0
        var secondOpened = false
        let cycleDone = { [self] in
            closed += 1
            guard closed == (secondOpened ? 2 : 1) else { return }
            judgeCycle(first, second, secondOpened: secondOpened)
            engine.loop.execute { self.next() }
        }
        first.onConnAck = { [self] first in
            guard first.connAck?.reasonCode == .success else { return }
            secondOpened = true
            engine.open(second)
            first.expectClose(within: engine.timeout)
        }
        first.onClose = { _ in
            // A takeover is done once both CONNACK and close are in; end the second cleanly.
            if second.phase == .open { second.disconnect() }
            cycleDone()
        }
        second.onConnAck = { second in
            if second.connAck?.reasonCode != .success || first.phase == .closed { second.disconnect() }
            if second.connAck?.reasonCode != .success { first.disconnect() }
        }
        second.onClose = { _ in
            if first.phase != .closed { first.disconnect() }
            cycleDone()
        }
        engine.open(first)
    }

    private func judgeCycle(_ first: BenchConnection, _ second: BenchConnection, secondOpened: Bool) {
        guard secondOpened else {
            stats.error("first_" + (judge(first) ?? "not_opened"))
            return
        }
        if let reason = judge(second) { return stats.error(reason) }
        if first.failure == "not_closed" { return stats.error("old_not_closed") }
        if let failure = first.failure { return stats.error("old_" + failure) }
        // DESIGN R4 (and MQTT 5.0 4.11) want DISCONNECT 0x8E before the close; mosquitto
        // 2.0.11 closes without it. Reported as its own count, the takeover itself succeeded.
        if first.serverDisconnect == .sessionTakenOver { takeoverDisconnects += 1 }
        stats.success(nanoseconds: second.connectLatency)
        oldClose.success(nanoseconds: first.closedAt &- second.startedAt)
    }

    private func finish() {
        guard let start = startSample else { return }
        let end = CPUSample(pid: pid)
        let rate = Double(stats.ok) / max(end.seconds(since: start), 1e-9)
        var report = Report(mode: "takeover")
        report.fields = [.int("cycles", stats.cycles), .int("ok", stats.ok), .int("errors", stats.errorCount), .rate("rate", rate)]
            + latencyFields(stats) + latencyFields(oldClose, prefix: "old_close_")
            + [.int("disconnect_0x8e", takeoverDisconnects)]
        // Each takeover is two connections.
        report.brokerCPUPerCycle = cpuPerCycle(start: start, end: end, cycles: stats.cycles)
        if let cpu = report.brokerCPUPerCycle { report.fields.append(.number("cpu_us_per_cycle", cpu)) }
        report.fields += generatorFields(start: start, end: end, cycles: stats.cycles)
        report.details = commonDetails(start: start, end: end, cycles: stats.cycles, users: users)
        report.errors = stats.errors
        report.rate = rate
        report.p99 = stats.percentile(99)
        promise.succeed(report)
    }
}

// MARK: - reject

/// Owners hold `conns` live sessions; another identity claims each again and again, and
/// every claim must be refused (5.0: 0x87, 3.1.1: 5) while the owner stays connected.
/// A broker that lets the claim through (a takeover) gets an error per claim, and the owner
/// is connected again before the next one.
final class RejectMode: LoadMode, @unchecked Sendable {
    private final class Slot: @unchecked Sendable {
        let index: Int
        var owner: BenchConnection?
        var ownerUp = false
        var ownerFailures = 0
        var claimInFlight = false
        var ownerLostDuringClaim = false
        init(index: Int) { self.index = index }
    }

    private var stats = LatencyStats()
    private var users = 0
    private var claims = 0
    private var activeSlots = 0
    private var stopAt: UInt64 = 0
    private var startSample: CPUSample?
    private var ownerReconnects = 0

    func start() {
        users = load.userCount(forLiveSessions: load.conns)
        startSample = CPUSample(pid: pid)
        stopAt = monotonicNanoseconds() &+ secondsInNanoseconds
        activeSlots = load.conns
        for index in 0..<load.conns { openOwner(Slot(index: index)) }
    }

    private var stopping: Bool {
        engine.aborted || monotonicNanoseconds() >= stopAt || claims >= (load.total ?? Int.max)
    }

    private func session(_ slot: Slot) -> String { prefix + "r" + String(slot.index) }

    private func openOwner(_ slot: Slot) {
        guard !stopping, slot.ownerFailures < 3 else { return slotDone() }
        let owner = BenchConnection(
            connect: makeConnect(session: session(slot), user: prefix + "o" + String(slot.index), cleanStart: true),
            tag: slot.index)
        slot.owner = owner
        owner.onConnAck = { [self] owner in
            guard owner.connAck?.reasonCode == .success else { return }
            slot.ownerUp = true
            slot.ownerFailures = 0
            claim(slot)
        }
        owner.onClose = { [self] owner in
            let wasUp = slot.ownerUp
            slot.ownerUp = false
            if finishingOwners.contains(slot.index) {
                slotDone()
            } else if !wasUp {
                // Never held the session: count it and try again, a few times at most.
                stats.error("owner_" + (judge(owner) ?? "closed"))
                slot.ownerFailures += 1
                engine.loop.execute { self.openOwner(slot) }
            } else if slot.claimInFlight {
                slot.ownerLostDuringClaim = true
            } else {
                stats.error("owner_lost")
                ownerReconnects += 1
                engine.loop.execute { self.openOwner(slot) }
            }
        }
        engine.open(owner)
    }

    private var finishingOwners: Set<Int> = []

    private func claim(_ slot: Slot) {
        guard !stopping else {
            finishingOwners.insert(slot.index)
            slot.owner?.disconnect()
            return
        }
        claims += 1
        let n = claims
        let claimant = BenchConnection(
            connect: makeConnect(session: session(slot), user: prefix + "x" + String(n % users), cleanStart: true),
            tag: slot.index)
        slot.claimInFlight = true
        slot.ownerLostDuringClaim = false
        claimant.onConnAck = { claimant in
            // Let through: end it cleanly, which also ends the session it took.
            if claimant.connAck?.reasonCode == .success { claimant.disconnect() }
        }
        claimant.onClose = { [self] claimant in
            slot.claimInFlight = false
            let code = claimant.connAck?.reasonCode
            if code == .notAuthorized, claimant.failure == nil {
                stats.success(nanoseconds: claimant.connectLatency)
                if slot.ownerLostDuringClaim { stats.error("owner_lost") }
            } else if code == .success {
                stats.error("accepted_takeover")
            } else if let code, code != .notAuthorized {
                stats.error(connAckErrorKey(code, version))
            } else {
                stats.error(claimant.failure ?? "closed_before_connack")
            }
            if slot.ownerUp {
                engine.loop.execute { self.claim(slot) }
            } else {
                ownerReconnects += 1
                engine.loop.execute { self.openOwner(slot) }
            }
        }
        engine.open(claimant)
    }

    private func slotDone() {
        activeSlots -= 1
        if activeSlots == 0 { finish() }
    }

    private func finish() {
        guard let start = startSample else { return }
        let end = CPUSample(pid: pid)
        let rate = Double(stats.ok) / max(end.seconds(since: start), 1e-9)
        var report = Report(mode: "reject")
        report.fields = [.int("claims", claims), .int("rejected", stats.ok), .int("errors", stats.errorCount), .rate("rate", rate)]
            + latencyFields(stats)
        report.brokerCPUPerCycle = cpuPerCycle(start: start, end: end, cycles: max(claims, 1))
        if let cpu = report.brokerCPUPerCycle { report.fields.append(.number("cpu_us_per_cycle", cpu)) }
        report.fields += generatorFields(start: start, end: end, cycles: max(claims, 1))
        report.details = commonDetails(start: start, end: end, cycles: claims, users: users)
        report.details.append(.int("owner_reconnects", ownerReconnects))
        report.errors = stats.errors
        report.rate = rate
        report.p99 = stats.percentile(99)
        promise.succeed(report)
    }
}

// MARK: - hold

/// Opens `conns` connections (`window` at a time), keeps them with PINGREQ for `seconds`,
/// then disconnects them all. With a pid: the broker's RSS before opening and with all open.
final class HoldMode: LoadMode, @unchecked Sendable {
    private var stats = LatencyStats()
    private var users = 0
    private var nextIndex = 0
    private var opening = 0
    private var open: [BenchConnection] = []
    private var holding = false
    private var closing = false
    private var remainingToClose = 0
    private var dropped = 0
    private var rssBefore: Int?
    private var rssAfter: Int?
    private var startSample: CPUSample?
    private var openedSample: CPUSample?
    private var heldSample: CPUSample?

    func start() {
        users = load.userCount(forLiveSessions: load.conns)
        rssBefore = pid.flatMap { BrokerProcess.residentKiB(pid: $0) }
        startSample = CPUSample(pid: pid)
        openMore()
    }

    private var pingInterval: UInt64 { UInt64(load.pingSeconds * 1e9) }

    private func openMore() {
        while opening < load.window, nextIndex < load.conns, !engine.aborted {
            let n = nextIndex
            nextIndex += 1
            opening += 1
            let keepAlive = UInt16(min(65535, max(10, Int(load.pingSeconds * 3))))
            let connection = BenchConnection(
                connect: makeConnect(session: prefix + "h" + String(n), user: prefix + "u" + String(n % users), cleanStart: true, keepAlive: keepAlive),
                tag: n)
            connection.pingInterval = pingInterval
            connection.onConnAck = { [self] connection in
                guard connection.connAck?.reasonCode == .success else { return }
                opening -= 1
                stats.success(nanoseconds: connection.connectLatency)
                open.append(connection)
                afterOpen()
            }
            connection.onClose = { [self] connection in
                if connection.connAck?.reasonCode != .success {
                    opening -= 1
                    stats.error(judge(connection) ?? "closed_before_connack")
                    afterOpen()
                } else if closing {
                    remainingToClose -= 1
                    if remainingToClose == 0 { finish() }
                } else {
                    // Lost while held: the connection counts as an error, not as held.
                    dropped += 1
                    stats.error("dropped_" + (connection.failure ?? "by_broker"))
                    if let index = open.firstIndex(where: { $0 === connection }) { open.remove(at: index) }
                }
            }
            engine.open(connection)
        }
    }

    private func afterOpen() {
        if nextIndex < load.conns, !engine.aborted {
            engine.loop.execute { self.openMore() }
            return
        }
        guard opening == 0, !holding else { return }
        holding = true
        openedSample = CPUSample(pid: pid)
        engine.loop.scheduleTask(in: .nanoseconds(Int64(secondsInNanoseconds))) { self.endHold() }
    }

    private func endHold() {
        rssAfter = pid.flatMap { BrokerProcess.residentKiB(pid: $0) }
        heldSample = CPUSample(pid: pid)
        closing = true
        let live = open.filter { $0.phase == .open }
        remainingToClose = live.count
        if live.isEmpty { return finish() }
        for connection in live { connection.disconnect() }
    }

    private func finish() {
        guard let start = startSample, let opened = openedSample, let held = heldSample else { return }
        let openRate = Double(stats.ok + dropped) / max(opened.seconds(since: start), 1e-9)
        let heldCount = stats.ok - dropped
        var report = Report(mode: "hold")
        report.fields = [
            .int("conns", load.conns), .int("held", heldCount), .int("errors", stats.errorCount),
            .rate("open_rate", openRate),
        ] + latencyFields(stats) + [
            .number("held_s", held.seconds(since: opened), digits: 2),
            .int("pings", engine.pingsSent), .int("pongs", engine.pongsReceived),
        ]
        if let rssBefore, let rssAfter {
            report.fields.append(.int("rss_before_kib", rssBefore))
            report.fields.append(.int("rss_after_kib", rssAfter))
            report.fields.append(.int("bytes_per_conn", heldCount > 0 ? (rssAfter - rssBefore) * 1024 / heldCount : 0))
        }
        if let openCPU = opened.brokerMicroseconds(since: start), let holdCPU = held.brokerMicroseconds(since: opened) {
            report.brokerCPUPerCycle = openCPU / Double(max(stats.ok + dropped, 1))
            report.fields.append(.number("cpu_us_per_cycle", report.brokerCPUPerCycle!))
            report.fields.append(.number("hold_cpu_pct", holdCPU / 1e4 / max(held.seconds(since: opened), 1e-9), digits: 2))
        }
        report.details = commonDetails(start: start, end: held, cycles: stats.cycles, users: users)
        report.details.append(.number("ping_s", load.pingSeconds))
        report.errors = stats.errors
        report.rate = openRate
        report.p99 = stats.percentile(99)
        promise.succeed(report)
    }
}
