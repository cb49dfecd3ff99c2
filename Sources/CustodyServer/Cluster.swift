import ArgumentParser
import ClusterOwnership
import CustodyConfig
import EtcdGateway
import Foundation
import Logging
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
