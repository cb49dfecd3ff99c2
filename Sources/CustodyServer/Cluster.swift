import ArgumentParser
import Broker
import ClusterMessaging
import ClusterOwnership
import CustodyConfig
import EtcdGateway
import Foundation
import LedgerCore
import Logging
import NATSClient
import ServiceLifecycle
import SessionLedger

extension Custody {
    /// With `cluster:` settings: the node joins the cluster on etcd (lease, node key, view,
    /// watch) and answers with the cluster authority over `ledger`; exits naming the problem
    /// when etcd does not answer or the node id is taken. Without them: nil.
    func joinCluster(_ configuration: ClusterConfiguration?, ledger: LMDBSessionLedger) async throws -> ClusterSessionAuthority? {
        guard let configuration else { return nil }
        let gateway = EtcdGateway(endpoints: configuration.etcd)
        let authority = ClusterSessionAuthority(
            settings: .init(nodeID: configuration.nodeID, leaseSeconds: Int64(configuration.leaseSeconds)),
            gateway: gateway, local: ledger, logger: Logger(label: "custody.cluster"))
        do {
            try await authority.start()
        } catch {
            FileHandle.standardError.write(Data(
                "custody: cannot join the cluster on etcd \(configuration.etcd.joined(separator: ",")) as node \(configuration.nodeID): \(error)\n".utf8))
            authority.close()
            await gateway.shutdown()
            throw ExitCode.failure
        }
        say("custody: cluster node=\(configuration.nodeID) etcd=\(configuration.etcd.joined(separator: ",")) lease_seconds=\(configuration.leaseSeconds) lease=\(authority.leaseID) expiry_leader=\(authority.isExpiryLeader ? 1 : 0)")
        return authority
    }
}

extension Custody {
    /// With `cluster.nats`: the node's messages reach the other nodes and theirs reach it, on
    /// NATS JetStream; exits naming the problem when NATS does not answer. Without it: nil.
    func joinMessaging(_ configuration: ClusterConfiguration?, broker: Broker) async throws -> NATSClusterLink? {
        guard let configuration, !configuration.nats.isEmpty else { return nil }
        let servers = configuration.nats.compactMap(NATSServer.init(url:))
        var settings = ClusterMessagingSettings(nodeID: configuration.nodeID, servers: servers, replicas: configuration.natsReplicas)
        settings.batchMessages = configuration.natsBatch
        do {
            let link = try await NATSClusterLink.start(settings, broker: broker, logger: Logger(label: "custody.cluster.nats"))
            say("custody: cluster messages on NATS \(configuration.nats.joined(separator: ",")) stream=\(settings.streamName) replicas=\(settings.replicas) batch=\(settings.batchMessages) consumer=\(settings.consumerName) server=\(link.connection.connectedServer.map(String.init(describing:)) ?? "-")")
            return link
        } catch {
            throw await startFailed(
                "cannot carry the cluster's messages on NATS \(configuration.nats.joined(separator: ",")): \(error)", broker: broker)
        }
    }
}

extension NATSClusterLink {
    /// Persistent sessions follow their owner across nodes: only the node etcd gives a
    /// session writes its record; a grant first takes the session on from its record when it
    /// lived elsewhere (refused, and taken back in etcd, when that cannot be read); the node
    /// that expires a session deletes its record; the node that records a dead node's
    /// connection as lost publishes its will.
    func followSessions(of cluster: ClusterSessionAuthority) {
        setSessionOwner { [weak cluster] name in cluster?.holds(name) ?? true }
        cluster.beforeGranting { [weak self] name, present, previousNode in
            try await self?.prepareSession(name, present: present, previousNode: previousNode)
        }
        cluster.onSessionsExpired { [weak self] events in
            self?.sessionsExpired(events.map(\.sessionName))
        }
        let isConnected: @Sendable (SessionName) -> Bool = { [weak cluster] in cluster?.isConnected($0) ?? false }
        cluster.onConnectionLost { [weak self] name in
            self?.publishWillOfLostSession(name, isConnected: isConnected)
        }
    }
}

/// Closes the cluster link after the front (no more publishes) and before the stores.
struct ClusterMessagingService: Service, CustomStringConvertible {
    let link: NATSClusterLink

    func run() async throws {
        try? await gracefulShutdown()
        await link.close()
    }

    var description: String { "cluster messages" }
}
