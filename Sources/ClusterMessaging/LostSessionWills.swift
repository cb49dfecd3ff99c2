// Wills of sessions whose node died (SIGKILL) while they were connected. Their node cannot
// publish them; the node that records their loss (part 1's failure rules: whichever survivor's
// etcd Txn wins) reads the will from the session's record in JetStream, waits out its Will
// Delay Interval (at most the session's expiry), and publishes it to the whole cluster, unless
// the session was resumed meanwhile (MQTT 5.0 section 3.1.3.2.2).
import Broker
import Foundation
import LedgerCore

extension NATSClusterLink {
    /// `isConnected`: whether the session is connected again (on any node), asked when its
    /// delay has passed.
    public func publishWillOfLostSession(_ name: SessionName, isConnected: @escaping @Sendable (SessionName) -> Bool) {
        let sessions = self.sessions
        let broker = self.broker
        let logger = self.logger
        let nodeID = settings.nodeID
        Task {
            do {
                guard let record = try await sessions.record(of: name), record.node != nodeID, record.connected,
                    let will = record.willMessage
                else { return }
                let delay = record.willDelay ?? 0
                if delay > 0 {
                    try await Task.sleep(for: .seconds(Int(delay)))
                    if isConnected(name) {
                        logger.info("cluster: a lost session resumed within its will delay; its will is not sent", metadata: ["session_name": "\(name)"])
                        return
                    }
                }
                try await broker.publishWillOfLostSession(will, session: name)
                logger.info("cluster: the will of a session lost with its node published", metadata: [
                    "session_name": "\(name)", "from_node": "\(record.node)", "topic": "\(will.topic)", "will_delay": "\(delay)",
                ])
                // A session that ended with its connection leaves nothing in the cluster.
                if record.persistent == false { sessions.ended(name) }
            } catch {
                logger.error("cluster: the will of a session lost with its node was not published: \(error)", metadata: ["session_name": "\(name)"])
            }
        }
    }
}
