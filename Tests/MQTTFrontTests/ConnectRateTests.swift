import Foundation
import MQTTCodec
import NIOCore
import Testing

/// CONNECTs per session name (`limits.connectsPerSecondPerSession`, 1 a second as Event Grid):
/// the first CONNECT of a second is granted, the next one for the same name within that second
/// gets CONNACK 0x9F (3.1.1: return code 3) and is recorded as `rejected(quotaExceeded)`; a
/// second later it is granted again. Other session names are not slowed. 0 turns it off.
@Suite("Connect rate per session name")
struct ConnectRateTests {
    @Test func aSecondCONNECTWithinASecondIsRefusedWith0x9F() async throws {
        try await offPool {
            try withCustody("connect-rate", ["--metrics", "127.0.0.1:0"]) { custody in
                let first = try RawClient(port: custody.port)
                #expect(try first.connect("busy", user: "dev").reasonCode == .success)
                let started = Date()
                try first.send(.disconnect(MQTTDisconnect()))
                #expect(try first.receive() == nil)

                let again = try RawClient(port: custody.port)
                let refused = try again.connect("busy", user: "dev")
                // Only meaningful if it came within the second (it takes milliseconds).
                if Date().timeIntervalSince(started) < 0.9 {
                    #expect(refused.reasonCode == .connectionRateExceeded)
                    #expect(try again.receiveUntilClosed().isEmpty)
                    let v3 = try RawClient(port: custody.port, version: .mqtt3_1_1)
                    let v3Refused = try v3.connect("busy", user: "dev", version: .mqtt3_1_1)
                    #expect(MQTTConnectReturnCode(v3Refused.reasonCode) == .serverUnavailable)
                    let rejections = try custody.events().filter { $0.sessionName.value == "busy" && $0.kind == .rejected(.quotaExceeded) }
                    #expect(rejections.count == 2)
                    #expect(try custody.limitExceeded("connectsPerSecondPerSession") == 2)
                }
                // Others are not slowed meanwhile.
                for name in ["calm-1", "calm-2"] {
                    let other = try RawClient(port: custody.port)
                    #expect(try other.connect(name, user: "dev").reasonCode == .success)
                }
                // A second after the last granted CONNECT, it is granted again.
                Thread.sleep(forTimeInterval: max(0, 1.1 - Date().timeIntervalSince(started)))
                let later = try RawClient(port: custody.port)
                #expect(try later.connect("busy", user: "dev").reasonCode == .success)
            }
        }
    }

    @Test func aLoopOfReconnectsIsRefusedButNeverLockedOut() async throws {
        try await offPool {
            try withCustody("connect-loop") { custody in
                // 30 CONNECTs as fast as they go, for 1.5 s at least: at most 3 can be granted (one a
                // second, the first at once), and at least 1 is.
                var granted = 0
                var refused = 0
                let started = Date()
                while granted + refused < 30 || Date().timeIntervalSince(started) < 1.5 {
                    let client = try RawClient(port: custody.port)
                    let connack = try client.connect("looper", user: "dev")
                    if connack.reasonCode == .success { granted += 1 } else { refused += 1 }
                    #expect([.success, .connectionRateExceeded].contains(connack.reasonCode))
                    usleep(20_000)
                }
                let seconds = Date().timeIntervalSince(started)
                #expect(granted >= 1)
                #expect(granted <= Int(seconds) + 1, "\(granted) granted in \(seconds) s")
                #expect(refused > 0)
                // Rate-limited lines: never one per refused CONNECT.
                #expect(custody.limitLines("connectsPerSecondPerSession").count <= 10, "\(custody.stderr)")
            }
        }
    }

    @Test func zeroTurnsItOffAndABadValueIsRefused() async throws {
        try await offPool {
            try withCustody("connect-rate-off", fastReconnects) { custody in
                for _ in 0..<10 {
                    let client = try RawClient(port: custody.port)
                    #expect(try client.connect("again", user: "dev").reasonCode == .success)
                    try client.send(.disconnect(MQTTDisconnect()))
                    _ = try client.receive()
                }
            }
            let (status, _, error) = try run(product: "custody", ["--connects-per-second-per-session", "1001"])
            #expect(status != 0)
            #expect(error.contains("--connects-per-second-per-session"), "\(error)")
        }
    }
}
