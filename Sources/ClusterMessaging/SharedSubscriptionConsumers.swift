// Shared subscriptions across nodes. Each `$share/G/F` that has members on some node has one
// durable consumer of its own on the message stream, filtered to F's subject; every node with
// members pulls from it, so JetStream gives each message to one node, and the broker there to
// one member. A message is acknowledged (explicitly, each) once delivered or stored there;
// one not acknowledged in time goes to another puller.
import Broker
import Logging
import NATSClient
import NIOConcurrencyHelpers
import NIOCore

final class SharedSubscriptionConsumers: @unchecked Sendable {
    private let jetStream: JetStream
    private let broker: Broker
    private let settings: ClusterMessagingSettings
    private let logger: Logger
    private let lock = NIOLock()
    private var active: [String: (pull: PullConsumer, task: Task<Void, Never>)] = [:]
    private var watcher: Task<Void, Never>?

    init(jetStream: JetStream, broker: Broker, settings: ClusterMessagingSettings, logger: Logger) {
        self.jetStream = jetStream
        self.broker = broker
        self.settings = settings
        self.logger = logger
    }

    /// Follows this node's shared subscriptions: a pull for each that has members here (looked
    /// at every half second).
    func start() {
        let task = Task { [weak self] in
            while !Task.isCancelled {
                await self?.refresh()
                try? await Task.sleep(nanoseconds: 500_000_000)
            }
        }
        lock.withLock { watcher = task }
    }

    func refresh() async {
        let wanted = broker.sharedSubscriptions
        let current = lock.withLock { Set(active.keys) }
        for share in wanted.subtracting(current) {
            do {
                try await open(share)
            } catch {
                logger.warning("cluster: shared subscription \(share) cannot be taken from NATS yet: \(error)")
            }
        }
        for share in current.subtracting(wanted) { close(share) }
    }

    /// `custody-share-` and a 64-bit FNV-1a hash of `$share/G/F` in hex (consumer names take no `.`).
    static func consumerName(_ share: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in share.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "custody-share-" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    private func open(_ share: String) async throws {
        guard let (_, filter) = TopicRules.splitShare(share) else { return }
        let name = Self.consumerName(share)
        if try await jetStream.consumerInfo(stream: settings.streamName, name: name) == nil {
            var config = ConsumerConfig(durableName: name)
            config.deliverPolicy = "new"
            config.ackPolicy = "explicit"
            // nats-server 2.9 takes one filter subject: `F/#` is taken as `F.>` (not F itself).
            config.filterSubject = NATSClusterLink.reliableMapping.subjects(filter: String(filter))[0]
            config.ackWait = settings.ackWaitSeconds * 1_000_000_000
            config.maxAckPending = 10_000
            config.numReplicas = settings.replicas
            _ = try await jetStream.createConsumer(stream: settings.streamName, config)
        }
        // Small pulls, so that several nodes' members share the messages.
        let pull = try PullConsumer(jetStream, stream: settings.streamName, consumer: name, batch: 16, expires: .seconds(5))
        let task = Task { [broker, logger] in
            while true {
                let messages = await pull.nextBatch()
                guard !messages.isEmpty else { return }
                let publishes = messages.flatMap { ClusterMessageCodec.decodeBatch($0.payload) ?? [] }
                do {
                    try await broker.deliverSharedFromCluster(publishes, share: share)
                    for message in messages { try pull.ack(message) }
                } catch {
                    logger.error("cluster: messages for \(share) could not be delivered here (\(error)); this node stops taking them")
                    pull.stop()
                    return
                }
            }
        }
        lock.withLock { active[share] = (pull, task) }
    }

    private func close(_ share: String) {
        guard let (pull, _) = lock.withLock({ active.removeValue(forKey: share) }) else { return }
        // What it took and did not acknowledge goes to another node after the ack wait.
        pull.stop()
    }

    func stop() async {
        let (watcher, all) = lock.withLock { () -> (Task<Void, Never>?, [(pull: PullConsumer, task: Task<Void, Never>)]) in
            defer { active = [:] }
            return (self.watcher, Array(active.values))
        }
        watcher?.cancel()
        for (pull, task) in all {
            pull.stop()
            await task.value
        }
    }
}
