import NIOCore
import SessionLedger
import Synchronization

/// Every peer on the socket, and which of them holds which granted connection, so that a
/// takeover (R4) reaches the peer whose connection lost its session, and a shutdown every peer.
final class LedgerPeers: Sendable {
    private struct Tables {
        var peers: [ObjectIdentifier: NIOLoopBound<LedgerPeerHandler>] = [:]
        var holders: [ConnectionNumber: NIOLoopBound<LedgerPeerHandler>] = [:]
    }

    private let tables = Mutex(Tables())

    func add(_ peer: NIOLoopBound<LedgerPeerHandler>, id: ObjectIdentifier) {
        tables.withLock { $0.peers[id] = peer }
    }

    func remove(id: ObjectIdentifier) {
        tables.withLock { _ = $0.peers.removeValue(forKey: id) }
    }

    func hold(_ connection: ConnectionNumber, by peer: NIOLoopBound<LedgerPeerHandler>) {
        tables.withLock { $0.holders[connection] = peer }
    }

    func drop(_ connections: some Sequence<ConnectionNumber>) {
        tables.withLock { tables in
            for connection in connections { tables.holders.removeValue(forKey: connection) }
        }
    }

    /// The peer holding `connection`, taken out of the table; nil when none here does.
    func takeHolder(of connection: ConnectionNumber) -> NIOLoopBound<LedgerPeerHandler>? {
        tables.withLock { $0.holders.removeValue(forKey: connection) }
    }

    var all: [NIOLoopBound<LedgerPeerHandler>] { tables.withLock { Array($0.peers.values) } }

    var heldCount: Int { tables.withLock { $0.holders.count } }
}
