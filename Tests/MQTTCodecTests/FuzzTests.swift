import CustodyTesting
import MQTTCodec
import NIOCore
import Testing

// The decoder against 100,000 inputs made from a fixed seed: mutations of valid packets of
// every type in both versions, and plain random bytes. Each is decoded whole, in random
// chunks and (every tenth) byte by byte. Nothing may crash, trap or hang; every failure
// carries a reason code a server may close with; and how the bytes arrive never changes
// what they decode to.

/// What a stream of bytes decoded to, up to the first failure or the end of the bytes.
private enum Outcome: Equatable {
    case packet(MQTTPacket)
    case failure(MQTTDecodingError)
}

private func decodeAll(_ bytes: [UInt8], version: MQTTProtocolVersion?, chunks: (Int) -> Int) -> [Outcome] {
    var decoder = MQTTDecoder(protocolVersion: version, maximumPacketSize: 4_096)
    var buffer = ByteBuffer()
    var outcomes: [Outcome] = []
    var offset = 0
    while offset < bytes.count {
        let size = min(max(1, chunks(bytes.count - offset)), bytes.count - offset)
        buffer.writeBytes(bytes[offset..<offset + size])
        offset += size
        decoding: while true {
            switch decoder.decode(&buffer) {
            case .needMoreData: break decoding
            case .packet(let packet): outcomes.append(.packet(packet))
            case .failure(let error):
                outcomes.append(.failure(error))
                return outcomes
            }
        }
    }
    return outcomes
}

/// The reason codes a decoding failure may close a connection with.
private let closingCodes: Set<MQTTReasonCode> = [
    .malformedPacket, .protocolError, .unsupportedProtocolVersion, .packetTooLarge, .topicAliasInvalid,
    .payloadFormatInvalid,
]

@Suite("Decoder fuzz (fixed seed)")
struct FuzzTests {
    static let inputs = 100_000

    @Test func mutatedAndRandomInputsNeverCrashAndDecodeAlikeWhateverTheChunks() throws {
        var corpus: [(bytes: [UInt8], version: MQTTProtocolVersion)] = []
        for (samples, version) in [(version5Samples, MQTTProtocolVersion.mqtt5), (version311Samples, .mqtt3_1_1)] {
            let encoder = MQTTEncoder(protocolVersion: version)
            for packet in samples {
                var buffer = ByteBuffer()
                _ = try encoder.encode(packet, into: &buffer)
                corpus.append((Array(buffer.readableBytesView), version))
            }
        }
        var random = SplitMix(seed: 0x00C0_FFEE_2026_1204)
        var failures = 0
        var packets = 0
        for index in 0..<Self.inputs {
            var bytes: [UInt8]
            var version: MQTTProtocolVersion?
            if index % 7 == 0 {
                bytes = (0..<Int.random(in: 0...48, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                version = Bool.random(using: &random) ? .mqtt5 : nil
            } else {
                let sample = corpus[Int.random(in: 0..<corpus.count, using: &random)]
                bytes = sample.bytes
                version = Int.random(in: 0..<4, using: &random) == 0 ? nil : sample.version
                // A second packet after the first, sometimes: the stream must stay in step.
                if Int.random(in: 0..<4, using: &random) == 0 {
                    bytes += corpus[Int.random(in: 0..<corpus.count, using: &random)].bytes
                }
                for _ in 0..<Int.random(in: 1...4, using: &random) where !bytes.isEmpty {
                    let at = Int.random(in: 0..<bytes.count, using: &random)
                    switch Int.random(in: 0..<6, using: &random) {
                    case 0: bytes[at] ^= UInt8(1) << UInt8.random(in: 0...7, using: &random)
                    case 1: bytes[at] = UInt8.random(in: 0...255, using: &random)
                    case 2: bytes.insert(UInt8.random(in: 0...255, using: &random), at: at)
                    case 3: bytes.remove(at: at)
                    case 4: bytes.removeLast(Int.random(in: 0...min(8, bytes.count), using: &random))
                    default:
                        // A remaining length that claims more than there is (or too much).
                        if bytes.count > 1 { bytes[1] = 0xFF }
                    }
                }
            }
            let whole = decodeAll(bytes, version: version) { $0 }
            var chunking = SplitMix(seed: UInt64(index))
            let chunked = decodeAll(bytes, version: version) { _ in Int.random(in: 1...7, using: &chunking) }
            #expect(chunked == whole, "input \(index): \(bytes)")
            if index % 10 == 0 {
                let byteByByte = decodeAll(bytes, version: version) { _ in 1 }
                #expect(byteByByte == whole, "input \(index) byte by byte: \(bytes)")
            }
            for outcome in whole {
                switch outcome {
                case .packet: packets += 1
                case .failure(let error):
                    failures += 1
                    #expect(closingCodes.contains(error.reasonCode), "input \(index): \(error)")
                }
            }
        }
        // The mutations reach both sides: plenty decode, plenty fail.
        #expect(packets > Self.inputs / 20)
        #expect(failures > Self.inputs / 10)
    }
}
