import EtcdGateway
import Foundation
import LedgerCore

/// Where the cluster keeps ownership in etcd (README, "A cluster on etcd"):
///
///     /custody/v1/sessions/{session}            → SessionRecord (JSON): owner, node, connection, state, deadline, slot
///     /custody/v1/clients/{client}/slots/{i}    → session name; i < maximumClientSessionsPerAuthenticationName
///     /custody/v1/nodes/{node}                  → node id, on the node's lease
///     /custody/v1/expiry                        → the node that expires deadlines, on its lease
///
/// `{client}` is the lower-cased authentication name (names that differ by case are one
/// client). Name parts are percent-encoded where they hold `%` or `/`, so that one prefix
/// never holds another's keys.
public struct ClusterKeys: Sendable {
    public let root: String

    public init(root: String = "/custody/v1") { self.root = root }

    public var sessions: String { root + "/sessions/" }
    public var clients: String { root + "/clients/" }
    public var nodes: String { root + "/nodes/" }
    public var expiryLeader: String { root + "/expiry" }

    /// One range that holds the node keys and the session keys and nothing else (what a
    /// node watches): `nodes/` and `sessions/` are neighbours in the root, no other key of
    /// the layout sorts between them.
    public var nodesAndSessions: (key: String, rangeEnd: String) { (nodes, prefixEnd(of: sessions)) }

    public func session(_ name: SessionName) -> String { sessions + Self.escape(name.value) }
    public func slots(of client: AuthenticationName) -> String { clients + Self.escape(client.key) + "/slots/" }
    public func slot(_ index: Int, of client: AuthenticationName) -> String { slots(of: client) + String(index) }
    public func node(_ id: String) -> String { nodes + Self.escape(id) }

    /// The session name of a session key; nil for another key.
    public func sessionName(ofKey key: String) -> String? {
        guard key.hasPrefix(sessions) else { return nil }
        return Self.unescape(String(key.dropFirst(sessions.count)))
    }

    /// The client key and slot index of a slot key; nil for another key.
    public func slot(ofKey key: String) -> (client: String, index: Int)? {
        guard key.hasPrefix(clients) else { return nil }
        let parts = key.dropFirst(clients.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[1] == "slots", let index = Int(parts[2]) else { return nil }
        return (Self.unescape(String(parts[0])), index)
    }

    /// The node id of a node key; nil for another key.
    public func nodeID(ofKey key: String) -> String? {
        guard key.hasPrefix(nodes) else { return nil }
        return Self.unescape(String(key.dropFirst(nodes.count)))
    }

    static func escape(_ part: String) -> String {
        guard part.contains(where: { $0 == "%" || $0 == "/" }) else { return part }
        return part.replacingOccurrences(of: "%", with: "%25").replacingOccurrences(of: "/", with: "%2F")
    }

    static func unescape(_ part: String) -> String {
        guard part.contains("%") else { return part }
        return part.replacingOccurrences(of: "%2F", with: "/").replacingOccurrences(of: "%25", with: "%")
    }
}

/// The value of a session key: who owns the session, where it is connected or until when
/// it waits disconnected, and which slot of its client it takes.
public struct SessionRecord: Codable, Sendable, Equatable {
    public var owner: String
    /// The node that holds (or last held) the connection.
    public var node: String
    public var connection: UInt64
    public var connected: Bool
    /// µs since the epoch when the session ends unless resumed; 0 while connected.
    public var deadline: Int64
    /// The session expiry interval in force, seconds.
    public var expiry: UInt32
    public var slot: Int
    public var protocolVersion: UInt8
    public var cleanStart: Bool

    public var ownerName: AuthenticationName { AuthenticationName(unchecked: owner) }

    /// Disconnected and past its deadline: no longer live, whatever etcd still holds.
    public func hasExpired(at now: Int64) -> Bool { !connected && deadline <= now }

    func encoded() -> Data { (try? JSONEncoder().encode(self)) ?? Data() }

    static func decode(_ data: Data) -> SessionRecord? { try? JSONDecoder().decode(SessionRecord.self, from: data) }

    /// The projection entry this record stands for (`SessionAuthority.session`).
    func entry(epoch: Int64) -> SessionEntry {
        SessionEntry(
            owner: ownerName, state: connected ? .connected : .disconnected(deadline: deadline),
            connection: connection, protocolVersion: ProtocolVersion(rawValue: protocolVersion) ?? .unknown,
            cleanStart: cleanStart, expiryInterval: expiry, sinceSequence: UInt64(epoch), sinceTime: 0,
            firstSequence: UInt64(epoch))
    }

    /// A ledger event about this session's current connection.
    func event(_ kind: LedgerEventKind, session: SessionName, epoch: Int64, expiry: UInt32? = nil) -> LedgerEvent {
        LedgerEvent(
            kind: kind, authenticationName: ownerName, sessionName: session, connection: connection,
            protocolVersion: ProtocolVersion(rawValue: protocolVersion) ?? .unknown, cleanStart: cleanStart,
            expiryInterval: expiry ?? self.expiry, epoch: UInt64(max(epoch, 0)))
    }
}
