import LedgerWire
import NIOCore
import Testing

/// The ledger socket's frames: every message survives its bytes, and bytes that are not a
/// frame of this version are refused with the reason the peer will read.
@Suite struct LedgerWireCodecTests {
    static let messages: [LedgerWireMessage] = [
        .claim(WireClaim(
            username: "fleet-1", password: Array("secret".utf8), sessionName: "truck-7", protocolVersion: 5,
            cleanStart: true, requestedExpiryInterval: 3600, remoteAddress: "127.0.0.1")),
        .claim(WireClaim(
            username: nil, password: nil, sessionName: "ünïcode", protocolVersion: 4, cleanStart: false,
            requestedExpiryInterval: .max, remoteAddress: "")),
        .claimAnswer(WireClaimAnswer(
            outcome: .granted, reasonCode: 0, sessionPresent: true, connection: 42, sequence: 7, expiryInterval: 3600,
            replacedConnection: 41)),
        .claimAnswer(WireClaimAnswer(outcome: .rejected, rejectionReason: 2, reasonCode: 0x97, sequence: 9)),
        .release(WireRelease(connection: 42, sessionName: "truck-7", reason: 1, newExpiryInterval: 0, remoteAddress: "::1")),
        .release(WireRelease(connection: 43, sessionName: "s", reason: 2)),
        .releaseAnswer(WireReleaseAnswer(outcome: .recorded, sequence: 10)),
        .authorize(WireAuthorize(connection: 42, action: .subscribe, topic: "fleet/+/status")),
        .authorizeAnswer(true),
        .authorizeAnswer(false),
        .takenOver(connection: 41, sessionName: "truck-7"),
        .error(.unsupportedVersion, "protocol version 2, this ledger speaks 1"),
    ]

    @Test(arguments: messages)
    func roundTrip(_ message: LedgerWireMessage) throws {
        let frame = LedgerWireFrame(requestID: 0xDEAD_BEEF, message: message)
        var bytes = frame.encoded()
        let length = bytes.readInteger(as: UInt32.self)!
        #expect(Int(length) == bytes.readableBytes)
        #expect(try LedgerWireFrame.decode(body: bytes) == frame)
    }

    @Test func aClaimsBytesAreTheDocumentedOnes() {
        let frame = LedgerWireFrame(requestID: 1, message: .claim(WireClaim(
            username: "u", password: nil, sessionName: "s", protocolVersion: 5, cleanStart: true,
            requestedExpiryInterval: 60, remoteAddress: "a")))
        // length, version 1, type 0x01, request id 1, flags (clean, username), level 5,
        // expiry 60, "s", "u", "a".
        #expect(Array(frame.encoded().readableBytesView) == [
            0, 0, 0, 21, 1, 0x01, 0, 0, 0, 1, 0b011, 5, 0, 0, 0, 60, 0, 1, 0x73, 0, 1, 0x75, 0, 1, 0x61,
        ])
    }

    @Test func anotherVersionIsRefused() {
        let body = ByteBuffer(bytes: [2, 0x01, 0, 0, 0, 1])
        #expect(throws: LedgerWireDecodingError(.unsupportedVersion, "protocol version 2, this ledger speaks 1")) {
            try LedgerWireFrame.decode(body: body)
        }
    }

    @Test func shortFieldsTrailingBytesAndUnknownTypesAreRefused() throws {
        var claim = LedgerWireFrame(requestID: 1, message: .authorize(WireAuthorize(connection: 1, action: .publish, topic: "t")))
            .encoded()
        claim.moveReaderIndex(forwardBy: 4)
        let cut = claim.getSlice(at: claim.readerIndex, length: claim.readableBytes - 1)!
        #expect(throws: LedgerWireDecodingError.self) { try LedgerWireFrame.decode(body: cut) }
        var longer = claim
        longer.writeInteger(UInt8(0))
        let trailing = #expect(throws: LedgerWireDecodingError.self) { try LedgerWireFrame.decode(body: longer) }
        #expect(trailing?.code == .malformedFrame)
        let unknown = #expect(throws: LedgerWireDecodingError.self) {
            try LedgerWireFrame.decode(body: ByteBuffer(bytes: [1, 0x42, 0, 0, 0, 1]))
        }
        #expect(unknown?.code == .unknownFrameType)
        let badAction = #expect(throws: LedgerWireDecodingError.self) {
            try LedgerWireFrame.decode(body: ByteBuffer(bytes: [1, 0x03, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0]))
        }
        #expect(badAction?.code == .malformedFrame)
        let notUTF8 = #expect(throws: LedgerWireDecodingError.self) {
            try LedgerWireFrame.decode(body: ByteBuffer(bytes: [1, 0x03, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0xFF]))
        }
        #expect(notUTF8?.code == .malformedFrame)
    }
}
