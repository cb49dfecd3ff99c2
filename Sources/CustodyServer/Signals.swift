import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// The signals `custody` acts on (SIGINT, SIGTERM, SIGHUP), caught by a plain handler that
// writes the signal's number to a pipe, read by a thread of its own.
//
// Dispatch's signal sources were used before. A source is registered later, on Dispatch's
// own thread, and until then the signal's disposition is SIG_IGN, so the signal is
// dropped; on a machine loaded with two builds, a SIGTERM sent after the "running" line was
// lost once and the test waited half an hour (not reproduced in 450 starts since). A
// handler installed with `sigaction` is in force when `handle` returns, on every thread.

/// The pipe's write end: set once, before the first handler is installed, and only read by
/// the handler (`write` is async-signal-safe; nothing else is done there).
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

private func relaySignal(_ number: Int32) {
    let saved = errno
    var byte = UInt8(truncatingIfNeeded: number)
    _ = write(signalPipeWriteEnd, &byte, 1)
    errno = saved
}

/// Calls each signal's Swift handler, on the relay's thread, once per signal received.
final class SignalRelay: Sendable {
    static let shared = SignalRelay()

    private let readEnd: Int32
    private let handlers = Mutex<[Int32: @Sendable () -> Void]>([:])

    private init() {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { fatalError("custody: cannot make the signal pipe (errno \(errno))") }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        // A full pipe must not block a handler: a signal more is one the thread will see anyway.
        _ = fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK)
        readEnd = ends[0]
        signalPipeWriteEnd = ends[1]
        let thread = Thread { [self] in run() }
        thread.name = "custody-signals"
        thread.start()
    }

    /// From now on `number` calls `body` (on the relay's thread) instead of its default action.
    func handle(_ number: Int32, _ body: @escaping @Sendable () -> Void) {
        handlers.withLock { $0[number] = body }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { relaySignal($0) }
        action.sa_flags = SA_RESTART
        sigemptyset(&action.sa_mask)
        sigaction(number, &action, nil)
    }

    private func run() {
        var byte: UInt8 = 0
        while true {
            let count = read(readEnd, &byte, 1)
            if count == 1 {
                let body = handlers.withLock { $0[Int32(byte)] }
                body?()
            } else if count < 0, errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}

/// Children inherit their parent's blocked-signal mask (Foundation's `Process` blocks
/// SIGTERM in the children it starts); a blocked SIGTERM would never reach our handlers.
func unblockTerminationSignals() {
    var set = sigset_t()
    sigemptyset(&set)
    for number in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, number) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}

/// SIGINT and SIGTERM by name, handled from the moment this returns. The first one asks
/// for a graceful stop; a second one ends the process at once (exit 128 + signal number).
func terminationSignals() -> AsyncStream<String> {
    AsyncStream<String> { continuation in
        let seen = SignalCount()
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            SignalRelay.shared.handle(number) {
                if seen.increment() > 1 {
                    FileHandle.standardError.write(Data("custody: second \(name), exiting at once\n".utf8))
                    _exit(128 + number)
                }
                continuation.yield(name)
            }
        }
    }
}

/// SIGHUP, each time it comes, from the moment this returns (until then it would end the process).
func hangupSignals() -> AsyncStream<Void> {
    AsyncStream<Void>(bufferingPolicy: .bufferingNewest(1)) { continuation in
        SignalRelay.shared.handle(SIGHUP) { continuation.yield() }
    }
}

private final class SignalCount: Sendable {
    private let count = Mutex(0)
    func increment() -> Int { count.withLock { $0 += 1; return $0 } }
}
