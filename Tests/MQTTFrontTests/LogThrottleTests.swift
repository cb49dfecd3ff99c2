import NIOCore
import Testing

@testable import MQTTFront

@Suite struct LogThrottleTests {
    @Test func writesABurstThenCountsWhatItHoldsBack() {
        let throttle = LogThrottle(burst: 3, interval: .seconds(10))
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let first = (0..<5).map { _ in throttle.admit("publish denied", now: start) }
        #expect(first.map(\.write) == [true, true, true, false, false])
        // Another kind has a window of its own.
        #expect(throttle.admit("subscribe denied", now: start) == (true, 0))
        // Within the window: still held back, still counted.
        #expect(throttle.admit("publish denied", now: start + .seconds(9)) == (false, 0))
        // A new window: written, and it says how many were held back.
        #expect(throttle.admit("publish denied", now: start + .seconds(10)) == (true, 3))
        #expect(throttle.admit("publish denied", now: start + .seconds(10)) == (true, 0))
    }
}
