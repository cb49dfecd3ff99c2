import CustodyTesting
import Logging
import MQTTCodec
import NIOCore
import NIOPosix
import SessionLedger
import Synchronization
import Testing

@testable import MQTTFront

// MQTTConnection in process: a transport in memory (`MemoryConnectionIO`), the in-memory
// SessionAuthority, a real NIO event loop; no sockets and no LMDB.

/// What the connection did to its transport, in order: packets written, flushes, the close.
final class MemoryConnectionIO: ConnectionIO, @unchecked Sendable {
    enum Step: Equatable {
        case write(MQTTPacket)
        case flush
        case close([MQTTPacket])
    }

    private let journal: Journal
    private let name: String
    weak var connection: MQTTConnection?
    var protocolVersion: MQTTProtocolVersion?
    var maximumPacketSize: Int?
    var channel: (any Channel)? { nil }
    var localAddressText: String? { nil }
    var isAboveOutboundHighWater = false

    init(_ name: String, journal: Journal) {
        self.name = name
        self.journal = journal
    }

    func write(_ packet: MQTTPacket) { journal.add(name, .write(packet)) }
    func flushWrites() { journal.add(name, .flush) }
    func resumeReading() {}
    func setProtocolVersion(_ version: MQTTProtocolVersion) { protocolVersion = version }
    func setMaximumPacketSize(_ size: Int?) { maximumPacketSize = size }

    /// Written at once, closed right after: what a transport does for a client that reads.
    func close(sending packets: [MQTTPacket]) {
        journal.add(name, .close(packets))
        guard let connection else { return }
        connection.eventLoop.execute { connection.inactive() }
    }
}

/// Every transport step of every connection of a test, in the order they happened.
final class Journal: Sendable {
    private let steps = Mutex<[(String, MemoryConnectionIO.Step)]>([])

    func add(_ who: String, _ step: MemoryConnectionIO.Step) { steps.withLock { $0.append((who, step)) } }

    var all: [(String, MemoryConnectionIO.Step)] { steps.withLock { $0 } }

    func packets(of who: String) -> [MQTTPacket] {
        all.compactMap { entry in
            guard entry.0 == who else { return nil }
            switch entry.1 {
            case .write(let packet): return packet
            case .close(let packets): return packets.first
            case .flush: return nil
            }
        }
    }

    func closed(_ who: String) -> Bool {
        all.contains { $0.0 == who && { if case .close = $0.1 { true } else { false } }($0) }
    }

    /// Waits (briefly) until `condition` holds: the answers come from other threads.
    func wait(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<500 {
            if condition() { return }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw TestFailure.timeout("\(what); journal: \(all.map { "\($0.0) \($0.1)" })")
    }
}

/// One event loop, one in-memory authority, and connections made on demand.
final class ConnectionHarness: @unchecked Sendable {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let authority: InMemorySessionAuthority
    let services: FrontServices
    let journal = Journal()
    private var connections: [String: MQTTConnection] = [:]
    private var transports: [String: MemoryConnectionIO] = [:]

    init(policy: NamespacePolicy = .default) {
        authority = InMemorySessionAuthority(policy: policy)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        // Long: these tests are about the claim, not the timeout, and a loaded machine may
        // leave a test's task waiting for seconds between its steps.
        var configuration = MQTTFrontConfiguration(
            listeners: [FrontListener](), connectTimeout: .seconds(120), maximumPacketSize: MQTTDecoder.largestPacketSize)
        // Takeovers within a second: no connect rate limit.
        configuration.connectsPerSecondPerSession = 0
        services = FrontServices(ledger: authority, pubsub: nil, logger: logger, configuration: configuration)
    }

    var loop: any EventLoop { group.next() }

    /// A new connection named `name` (for the journal), started as a transport would.
    func open(_ name: String) async throws {
        let loop = self.loop
        let services = self.services
        let journal = self.journal
        let (connection, io) = try await loop.submit {
            let connection = MQTTConnection(services: services, eventLoop: loop)
            let io = MemoryConnectionIO(name, journal: journal)
            io.connection = connection
            connection.attach(io)
            connection.start(remoteAddress: "127.0.0.1:\(1000 + name.count)")
            return (connection, io)
        }.get()
        connections[name] = connection
        transports[name] = io
    }

    func send(_ name: String, _ packet: MQTTPacket) async throws {
        let connection = try #require(connections[name])
        try await loop.submit { connection.process(.packet(packet)) }.get()
    }

    func shutdown() async throws {
        try await group.shutdownGracefully()
    }
}

private func connect(_ clientID: String, user: String, version: MQTTProtocolVersion = .mqtt5, expiry: UInt32? = nil)
    -> MQTTPacket
{
    .connect(MQTTConnect(
        protocolVersion: version, clientIdentifier: clientID, cleanStart: true, keepAlive: 60, userName: user,
        properties: expiry.map { [.sessionExpiryInterval($0)] } ?? []))
}

private func connack(_ packets: [MQTTPacket]) -> MQTTConnAck? {
    for case .connack(let answer) in packets { return answer }
    return nil
}

@Suite("MQTTConnection in process")
struct MQTTConnectionTests {
    @Test func grantedConnectIsAnsweredOnlyAfterTheLedgerAndItsDisconnectIsRecorded() async throws {
        let harness = ConnectionHarness()
        try await harness.open("a")
        try await harness.send("a", connect("s1", user: "dev"))
        try await harness.journal.wait("CONNACK") { connack(harness.journal.packets(of: "a")) != nil }
        #expect(connack(harness.journal.packets(of: "a"))?.reasonCode == .success)
        #expect(harness.authority.events.map(\.kind) == [.connected])
        try await harness.send("a", .disconnect(MQTTDisconnect()))
        try await harness.journal.wait("the release") { harness.authority.events.count == 2 }
        #expect(harness.authority.events.last?.kind == .disconnected(.clientInitiatedDisconnect))
        #expect(harness.journal.closed("a"))
        try await harness.shutdown()
    }

    /// R4: the old connection hears 0x8E and is closed before the new CONNACK is written.
    @Test func takeoverEndsTheOldConnectionBeforeTheNewConnack() async throws {
        let harness = ConnectionHarness()
        try await harness.open("old")
        try await harness.send("old", connect("s1", user: "dev"))
        try await harness.journal.wait("first CONNACK") { connack(harness.journal.packets(of: "old")) != nil }
        try await harness.open("new")
        try await harness.send("new", connect("s1", user: "dev"))
        try await harness.journal.wait("second CONNACK") { connack(harness.journal.packets(of: "new")) != nil }
        let steps = harness.journal.all
        let oldClosed = try #require(steps.firstIndex { entry in
            guard entry.0 == "old", case .close(let packets) = entry.1 else { return false }
            return packets == [.disconnect(MQTTDisconnect(reasonCode: .sessionTakenOver))]
        })
        let newConnack = try #require(steps.firstIndex { entry in
            guard entry.0 == "new", case .write(.connack) = entry.1 else { return false }
            return true
        })
        #expect(oldClosed < newConnack)
        #expect(harness.authority.events.map(\.kind) == [.connected, .disconnected(.sessionTakenOver), .connected])
        try await harness.shutdown()
    }

    /// R6: another client is refused a live session; its owner is untouched.
    @Test func anotherClientIsRefusedALiveSession() async throws {
        let harness = ConnectionHarness()
        try await harness.open("owner")
        try await harness.send("owner", connect("s1", user: "alice"))
        try await harness.journal.wait("owner's CONNACK") { connack(harness.journal.packets(of: "owner")) != nil }
        try await harness.open("thief")
        try await harness.send("thief", connect("s1", user: "mallory"))
        try await harness.journal.wait("thief's close") { harness.journal.closed("thief") }
        #expect(connack(harness.journal.packets(of: "thief"))?.reasonCode == .notAuthorized)
        #expect(!harness.journal.closed("owner"))
        try await harness.shutdown()
    }

    /// R8: a decision that could not be made durable grants nothing (v5 0x88, v3.1.1 3).
    @Test(arguments: [MQTTProtocolVersion.mqtt5, .mqtt3_1_1])
    func aFailedLedgerRefusesWithServerUnavailable(version: MQTTProtocolVersion) async throws {
        let harness = ConnectionHarness()
        harness.authority.failNext(with: .storage(operation: "commit", code: LedgerError.mapFullCode, message: "full"))
        try await harness.open("a")
        try await harness.send("a", connect("s1", user: "dev", version: version))
        try await harness.journal.wait("the refusal") { harness.journal.closed("a") }
        #expect(connack(harness.journal.packets(of: "a"))?.reasonCode == .serverUnavailable)
        #expect(harness.authority.events.isEmpty)
        try await harness.shutdown()
    }

    /// Without a broker the front still answers what the protocol demands (PUBACK for QoS 1).
    @Test func withoutABrokerAQoS1PublishIsAcknowledged() async throws {
        let harness = ConnectionHarness()
        try await harness.open("a")
        try await harness.send("a", connect("s1", user: "dev"))
        try await harness.journal.wait("CONNACK") { connack(harness.journal.packets(of: "a")) != nil }
        try await harness.send("a", .publish(MQTTPublish(
            topicName: "t", payload: ByteBuffer(string: "x"), qos: .atLeastOnce, packetIdentifier: 9)))
        try await harness.journal.wait("PUBACK") {
            harness.journal.packets(of: "a").contains { if case .puback(let ack) = $0 { ack.packetIdentifier == 9 } else { false } }
        }
        try await harness.shutdown()
    }
}
