import LedgerWire
import NIOCore

/// Cuts the byte stream into frame bodies (the u32 length is consumed). A length outside
/// what the protocol allows is answered by the peer handler: the stream cannot be trusted.
struct LedgerFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = Result<ByteBuffer, LedgerWireDecodingError>

    private var broken = false

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard !broken else {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        guard length >= LedgerWire.headerBytes, length <= LedgerWire.maximumBodyBytes else {
            broken = true
            buffer.moveReaderIndex(to: buffer.writerIndex)
            let problem: WireErrorCode = length > LedgerWire.maximumBodyBytes ? .frameTooLarge : .malformedFrame
            context.fireChannelRead(wrapInboundOut(.failure(LedgerWireDecodingError(
                problem, "frame length \(length), expected \(LedgerWire.headerBytes)-\(LedgerWire.maximumBodyBytes)"))))
            return .needMoreData
        }
        guard buffer.readableBytes >= 4 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let body = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(wrapInboundOut(.success(body)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        // A partial frame at the end is dropped with the connection.
        buffer.moveReaderIndex(to: buffer.writerIndex)
        return .needMoreData
    }
}
