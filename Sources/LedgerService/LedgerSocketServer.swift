import Authorization
import CustodyModel
import Foundation
import LedgerWire
import Logging
import NIOCore
import NIOPosix
import SessionLedger
import Synchronization

/// The ledger as a service: a Unix domain socket (mode 0660) speaking the ledger protocol
/// (LedgerWire), for fronts outside this process such as Mosquitto with the custody plugin.
public final class LedgerSocketServer: Sendable {
    public let path: String
    private let shared: LedgerServiceContext
    private let server = Mutex<(any Channel)?>(nil)

    public init(
        path: String, ledger: any SessionAuthority, authority: (any IdentityAuthority)? = nil,
        access: any AccessControl = OpenAccess(), logger: Logger = Logger(label: "custody.ledger-socket")
    ) {
        self.path = path
        shared = LedgerServiceContext(
            ledger: ledger, logger: logger, group: MultiThreadedEventLoopGroup(numberOfThreads: 1),
            authority: authority, access: access)
    }

    /// Where takeovers of connections no peer here holds go (Custody's own front closes them).
    public func onTakeoverElsewhere(_ handler: @escaping @Sendable (ConnectionNumber) -> Void) {
        shared.setElsewhere(handler)
    }

    /// Binds the socket (a stale socket file left by a crash is replaced; anything else at the
    /// path is an error) and sets its mode to 0660.
    public func start() async throws {
        var status = stat()
        if lstat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFSOCK else {
                throw LedgerSocketError(path: path, problem: "exists and is not a socket")
            }
            if Self.answers(path) { throw LedgerSocketError(path: path, problem: "is served by another process") }
            unlink(path)
        }
        let shared = self.shared
        let bootstrap = ServerBootstrap(group: shared.group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let name = "peer-\(UInt32.random(in: 1...UInt32.max))"
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LedgerFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(LedgerPeerHandler(shared: shared, peerName: name))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
        } catch {
            throw LedgerSocketError(path: path, problem: "cannot be bound: \(error)")
        }
        guard chmod(path, 0o660) == 0 else {
            try? await channel.close()
            throw LedgerSocketError(path: path, problem: "mode 0660 cannot be set: errno \(errno)")
        }
        server.withLock { $0 = channel }
    }

    /// R4 from Custody's own front: a connection granted through this socket lost its session.
    public func takenOverElsewhere(_ connection: ConnectionNumber, session: SessionName) {
        _ = shared.tellHolder(of: connection, session: session)
    }

    /// A reload: claims from now on are decided by `authority`.
    public func replaceAuthority(_ authority: any IdentityAuthority) {
        shared.authority.replace(with: authority)
    }

    /// A reload: claims from now on get their permissions from `access`.
    public func replaceAccess(_ access: any AccessControl) {
        shared.access.replace(with: access)
    }

    /// Connections granted through the socket and not ended yet.
    public var heldConnections: Int { shared.peers.heldCount }

    /// Stops accepting, records the end of every peer's connections (one commit per peer),
    /// closes the peers and removes the socket file. Returns how many connections it ended.
    @discardableResult
    public func shutdown() async -> Int {
        let channel = server.withLock { channel in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
        let ended = shared.peers.heldCount
        let peers = shared.peers.all
        let futures = peers.map { peer in peer.eventLoop.flatSubmit { peer.value.shutdown() } }
        for future in futures { try? await future.get() }
        unlink(path)
        try? await shared.group.shutdownGracefully()
        return ended
    }

    /// Whether something accepts connections at `path` now.
    private static func answers(_ path: String) -> Bool {
        guard let address = try? SocketAddress(unixDomainSocketPath: path) else { return false }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        return address.withSockAddr { pointer, length in connect(descriptor, pointer, socklen_t(length)) == 0 }
    }
}

public struct LedgerSocketError: Error, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "ledger socket \(path) \(problem)" }
}
