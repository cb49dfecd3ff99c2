import NIOCore
import Synchronization

/// Keeps a flood of one kind of line (denials, limits exceeded) from flooding the log: per
/// kind, at most `burst` lines in each `interval`; the lines held back are counted, and the
/// next line written says how many (`suppressed`). Shared by every connection.
public final class LogThrottle: Sendable {
    private struct Window {
        var start: NIODeadline
        var written = 0
        var suppressed = 0
    }

    private let burst: Int
    private let interval: TimeAmount
    private let windows = Mutex<[String: Window]>([:])

    public init(burst: Int = 10, interval: TimeAmount = .seconds(10)) {
        precondition(burst > 0, "a throttle that writes nothing")
        self.burst = burst
        self.interval = interval
    }

    /// Whether a line of `kind` may be written now; when it may, how many of its kind were
    /// held back since the last one written (0: none).
    public func admit(_ kind: String, now: NIODeadline = .now()) -> (write: Bool, suppressed: Int) {
        windows.withLock { windows in
            var window = windows[kind] ?? Window(start: now)
            if now - window.start >= interval {
                window.start = now
                window.written = 0
            }
            let admitted: (Bool, Int)
            if window.written < burst {
                window.written += 1
                admitted = (true, window.suppressed)
                window.suppressed = 0
            } else {
                window.suppressed += 1
                admitted = (false, 0)
            }
            windows[kind] = window
            return admitted
        }
    }
}
