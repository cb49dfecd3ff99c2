import ArgumentParser
import Foundation
import LedgerWire
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What the ledger socket adds to a CONNECT: round trips of authorize requests (socket,
/// frames, the service's hop and answer; no commit), then claim and release round trips
/// (each waits for its durable commit, as the Mosquitto plugin's CONNECT does), one at a time.
struct LedgerSocketBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger-socket",
        abstract: "Round trips on custody's ledger socket: authorize (no commit: the socket and protocol's own cost) and claim (one durable commit).",
        discussion: """
            Final line: ledger-socket: authorize_p50=Xus authorize_p99=Yus authorize_mean=Zus \
            claim_p50=Xus claim_p99=Yus claim_mean=Zus claims=N. Claims use session names \
            bench-socket-N of one authentication name, clean start, each released before the next.
            """)

    @Option(help: "The ledger socket (custody --ledger-socket).")
    var socket: String

    @Option(help: "Authorize round trips to time.")
    var authorizations = 20_000

    @Option(help: "Claim round trips to time (each followed by its release).")
    var claims = 500

    func run() throws {
        let link = try BlockingLedgerLink(path: socket)
        var request: UInt32 = 0
        func call(_ message: LedgerWireMessage) throws -> LedgerWireMessage {
            request &+= 1
            return try link.call(LedgerWireFrame(requestID: request, message: message))
        }
        func claim(_ name: String) throws -> UInt64 {
            let answer = try call(.claim(WireClaim(
                username: "bench-socket", password: nil, sessionName: name, protocolVersion: 4, cleanStart: true,
                requestedExpiryInterval: 0, remoteAddress: "127.0.0.1")))
            guard case .claimAnswer(let granted) = answer, granted.outcome == .granted else {
                throw ValidationError("claim of \(name) not granted: \(answer)")
            }
            return granted.connection
        }
        let held = try claim("bench-socket-rtt")
        var authorize: [Double] = []
        authorize.reserveCapacity(authorizations)
        for index in 0..<authorizations {
            let started = DispatchTime.now().uptimeNanoseconds
            _ = try call(.authorize(WireAuthorize(connection: held, action: .publish, topic: "bench/\(index % 16)")))
            authorize.append(Double(DispatchTime.now().uptimeNanoseconds - started) / 1000)
        }
        var claimTimes: [Double] = []
        for index in 0..<claims {
            let name = "bench-socket-\(index)"
            let started = DispatchTime.now().uptimeNanoseconds
            let connection = try claim(name)
            claimTimes.append(Double(DispatchTime.now().uptimeNanoseconds - started) / 1000)
            _ = try call(.release(WireRelease(connection: connection, sessionName: name, reason: 1)))
        }
        _ = try call(.release(WireRelease(connection: held, sessionName: "bench-socket-rtt", reason: 1)))
        func summary(_ name: String, _ values: [Double]) -> String {
            let sorted = values.sorted()
            guard !sorted.isEmpty else { return "\(name)_p50=- \(name)_p99=- \(name)_mean=-" }
            let p50 = sorted[sorted.count / 2], p99 = sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
            let mean = sorted.reduce(0, +) / Double(sorted.count)
            return String(format: "%@_p50=%.1fus %@_p99=%.1fus %@_mean=%.1fus", name, p50, name, p99, name, mean)
        }
        print("ledger-socket: \(summary("authorize", authorize)) \(summary("claim", claimTimes)) claims=\(claims)")
    }
}

/// One blocking connection to the ledger socket.
private final class BlockingLedgerLink {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        guard path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { throw ValidationError("socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { throw ValidationError("cannot connect to \(path): errno \(errno)") }
    }

    deinit { close(descriptor) }

    func call(_ frame: LedgerWireFrame) throws -> LedgerWireMessage {
        let bytes = Array(frame.encoded().readableBytesView)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(descriptor, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw ValidationError("send: errno \(errno)") }
            sent += n
        }
        while true {
            let prefix = try read(4)
            let body = try read(prefix.reduce(0) { $0 << 8 | Int($1) })
            let answer = try LedgerWireFrame.decode(body: ByteBuffer(bytes: body))
            if answer.requestID == frame.requestID { return answer.message }
        }
    }

    private func read(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress! + done, count - done, 0) }
            guard n > 0 else { throw ValidationError("the ledger closed the socket (errno \(errno))") }
            done += n
        }
        return bytes
    }
}
