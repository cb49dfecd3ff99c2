import CustodyTesting
import Foundation
import LedgerWire
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A blocking client of the ledger socket, as the plugin is: one frame out, frames in.
final class LedgerSocketClient {
    let descriptor: Int32

    init(path: String) throws {
        descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8) + [0])
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else {
            close(descriptor)
            throw TestFailure.unexpected("cannot connect to \(path): errno \(errno)")
        }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(descriptor) }

    func send(raw bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func send(_ frame: LedgerWireFrame) {
        send(raw: Array(frame.encoded().readableBytesView))
    }

    /// The next frame; nil when the ledger closed the connection.
    func receive() throws -> LedgerWireFrame? {
        guard let prefix = try read(4) else { return nil }
        let length = prefix.reduce(0) { $0 << 8 | Int($1) }
        guard let body = try read(length) else { throw TestFailure.unexpected("frame cut short") }
        return try LedgerWireFrame.decode(body: ByteBuffer(bytes: body))
    }

    /// Sends a request and returns its answer (notices on the way are returned in `notices`).
    func call(_ message: LedgerWireMessage, id: UInt32, notices: inout [LedgerWireMessage]) throws -> LedgerWireMessage {
        send(LedgerWireFrame(requestID: id, message: message))
        while let frame = try receive() {
            if frame.requestID == id, !frame.message.isNotice { return frame.message }
            notices.append(frame.message)
        }
        throw TestFailure.unexpected("the ledger closed the socket instead of answering \(message)")
    }

    func call(_ message: LedgerWireMessage, id: UInt32 = 1) throws -> LedgerWireMessage {
        var notices: [LedgerWireMessage] = []
        return try call(message, id: id, notices: &notices)
    }

    private func read(_ count: Int) throws -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress! + done, count - done, 0) }
            if n == 0 { return nil }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { return nil }
                throw TestFailure.unexpected("recv: errno \(errno)")
            }
            done += n
        }
        return bytes
    }
}

extension LedgerWireMessage {
    var isNotice: Bool {
        if case .takenOver = self { return true }
        return false
    }
}

/// A ledger socket path short enough for sun_path, in a directory of its own.
func ledgerSocketPath(_ label: String) throws -> String {
    let directory = "/tmp/custody-ls-\(label)-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    return directory + "/ledger.sock"
}

/// A claim as the plugin sends it for a 3.1.1 CONNECT.
func wireClaim(_ session: String, user: String?, clean: Bool = true, password: String? = nil) -> LedgerWireMessage {
    .claim(WireClaim(
        username: user, password: password.map { Array($0.utf8) }, sessionName: session, protocolVersion: 4,
        cleanStart: clean, requestedExpiryInterval: clean ? 0 : .max, remoteAddress: "127.0.0.1"))
}

/// custody's ledger in `directory`, read by `custody-audit` (history or verify).
func audit(_ arguments: [String]) throws -> (Int32, String, String) {
    try run(product: "custody-audit", arguments)
}
