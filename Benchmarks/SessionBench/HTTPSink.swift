import ArgumentParser
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `custody-bench http-sink`: an HTTP/1.1 endpoint that answers every request 204 at once
/// (keep-alive), for the routes' benchmarks. Prints `http-sink listening PORT`, then on
/// SIGTERM or SIGINT one JSON line: requests, body bytes, and its own CPU seconds.
struct HTTPSink: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http-sink", abstract: "An HTTP endpoint answering 204 to everything (routes' benchmarks).")

    @Option(help: "Port on 127.0.0.1 (0: any free one).")
    var port: Int = 0

    @Option(help: "Event loop threads.")
    var threads: Int = 1

    func run() throws {
        let counts = SinkCounts()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(SinkHandler(counts: counts))
                }
            }
            .bind(host: "127.0.0.1", port: port).wait()
        FileHandle.standardOutput.write(Data("http-sink listening \(channel.localAddress?.port ?? port)\n".utf8))
        let stop = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for signal in [SIGTERM, SIGINT] {
            Foundation.signal(signal, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signal)
            source.setEventHandler { stop.signal() }
            source.resume()
            sources.append(source)
        }
        stop.wait()
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let (requests, bytes) = counts.totals
        FileHandle.standardOutput.write(Data(#"{"requests":\#(requests),"bodyBytes":\#(bytes),"cpuSeconds":\#(cpu)}"#.utf8 + [10]))
    }
}

final class SinkCounts: Sendable {
    private let requests = Atomic<Int>(0)
    private let bytes = Atomic<Int>(0)
    func add(requests: Int, bytes: Int) {
        self.requests.add(requests, ordering: .relaxed)
        self.bytes.add(bytes, ordering: .relaxed)
    }
    var totals: (Int, Int) { (requests.load(ordering: .relaxed), bytes.load(ordering: .relaxed)) }
}

private final class SinkHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let counts: SinkCounts
    private var bodyBytes = 0
    private var keepAlive = true

    init(counts: SinkCounts) { self.counts = counts }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            keepAlive = head.isKeepAlive
            bodyBytes = 0
        case .body(let buffer):
            bodyBytes += buffer.readableBytes
        case .end:
            counts.add(requests: 1, bytes: bodyBytes)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: "0")
            let head = HTTPResponseHead(version: .http1_1, status: .noContent, headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            let keep = keepAlive
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keep { context.close(promise: nil) }
            }
        }
    }
}
