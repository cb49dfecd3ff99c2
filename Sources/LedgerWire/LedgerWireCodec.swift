import NIOCore

// The bytes of a frame: a big-endian u32 length of the body, then the body: u8 version,
// u8 type, u32 request id, and the type's fields (integers big-endian, strings and bytes as
// a u16 length and that many bytes, strings UTF-8). README.md ("The ledger socket") has the
// table of fields.

/// A frame that cannot be read: the peer gets an error frame with this and is closed.
public struct LedgerWireDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: WireErrorCode
    public var detail: String

    public init(_ code: WireErrorCode, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code): \(detail)" }
}

extension LedgerWireFrame {
    /// The frame with its length prefix.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64)
        buffer.writeInteger(UInt32(0))
        buffer.writeInteger(LedgerWire.version)
        buffer.writeInteger(message.type.rawValue)
        buffer.writeInteger(requestID)
        message.writeFields(to: &buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - 4), at: 0)
        return buffer
    }

    /// Reads one frame body (what follows the length). Trailing bytes are malformed.
    public static func decode(body: ByteBuffer) throws(LedgerWireDecodingError) -> LedgerWireFrame {
        var body = body
        guard let version = body.readInteger(as: UInt8.self) else { throw .init(.malformedFrame, "empty frame") }
        guard version == LedgerWire.version else {
            throw .init(.unsupportedVersion, "protocol version \(version), this ledger speaks \(LedgerWire.version)")
        }
        guard let typeByte = body.readInteger(as: UInt8.self), let requestID = body.readInteger(as: UInt32.self) else {
            throw .init(.malformedFrame, "frame shorter than its header")
        }
        guard let type = LedgerWire.FrameType(rawValue: typeByte) else {
            throw .init(.unknownFrameType, "unknown frame type 0x\(String(typeByte, radix: 16))")
        }
        var reader = FieldReader(buffer: body, type: type)
        let message = try reader.message()
        guard reader.buffer.readableBytes == 0 else {
            throw .init(.malformedFrame, "\(reader.buffer.readableBytes) bytes after the \(type) frame's fields")
        }
        return LedgerWireFrame(requestID: requestID, message: message)
    }
}

extension LedgerWireMessage {
    public var type: LedgerWire.FrameType {
        switch self {
        case .claim: .claim
        case .release: .release
        case .authorize: .authorize
        case .claimAnswer: .claimAnswer
        case .releaseAnswer: .releaseAnswer
        case .authorizeAnswer: .authorizeAnswer
        case .takenOver: .takenOver
        case .error: .error
        }
    }

    func writeFields(to buffer: inout ByteBuffer) {
        switch self {
        case .claim(let claim):
            var flags: UInt8 = claim.cleanStart ? 1 : 0
            if claim.username != nil { flags |= 2 }
            if claim.password != nil { flags |= 4 }
            buffer.writeInteger(flags)
            buffer.writeInteger(claim.protocolVersion)
            buffer.writeInteger(claim.requestedExpiryInterval)
            buffer.writeShortBytes(Array(claim.sessionName.utf8))
            if let username = claim.username { buffer.writeShortBytes(Array(username.utf8)) }
            if let password = claim.password { buffer.writeShortBytes(password) }
            buffer.writeShortBytes(Array(claim.remoteAddress.utf8))
        case .claimAnswer(let answer):
            buffer.writeInteger(answer.outcome.rawValue)
            buffer.writeInteger(answer.rejectionReason)
            buffer.writeInteger(answer.reasonCode)
            buffer.writeInteger(UInt8(answer.sessionPresent ? 1 : 0))
            buffer.writeInteger(answer.connection)
            buffer.writeInteger(answer.sequence)
            buffer.writeInteger(answer.expiryInterval)
            buffer.writeInteger(answer.replacedConnection)
        case .release(let release):
            buffer.writeInteger(release.connection)
            buffer.writeInteger(release.reason)
            buffer.writeInteger(UInt8(release.newExpiryInterval == nil ? 0 : 1))
            buffer.writeInteger(release.newExpiryInterval ?? 0)
            buffer.writeShortBytes(Array(release.sessionName.utf8))
            buffer.writeShortBytes(Array(release.remoteAddress.utf8))
        case .releaseAnswer(let answer):
            buffer.writeInteger(answer.outcome.rawValue)
            buffer.writeInteger(answer.sequence)
        case .authorize(let request):
            buffer.writeInteger(request.connection)
            buffer.writeInteger(request.action.rawValue)
            buffer.writeShortBytes(Array(request.topic.utf8))
        case .authorizeAnswer(let allowed):
            buffer.writeInteger(UInt8(allowed ? 1 : 0))
        case .takenOver(let connection, let sessionName):
            buffer.writeInteger(connection)
            buffer.writeShortBytes(Array(sessionName.utf8))
        case .error(let code, let detail):
            buffer.writeInteger(code.rawValue)
            buffer.writeShortBytes(Array(detail.utf8.prefix(Int(UInt16.max))))
        }
    }
}

extension ByteBuffer {
    fileprivate mutating func writeShortBytes(_ bytes: [UInt8]) {
        let count = min(bytes.count, Int(UInt16.max))
        writeInteger(UInt16(count))
        writeBytes(bytes.prefix(count))
    }
}

/// Reads a body's fields in order; any shortfall or bad value is a malformed frame.
private struct FieldReader {
    var buffer: ByteBuffer
    let type: LedgerWire.FrameType

    mutating func integer<T: FixedWidthInteger>(_ field: String) throws(LedgerWireDecodingError) -> T {
        guard let value = buffer.readInteger(as: T.self) else {
            throw .init(.malformedFrame, "\(type) frame ends before its \(field)")
        }
        return value
    }

    mutating func bytes(_ field: String) throws(LedgerWireDecodingError) -> [UInt8] {
        let count: UInt16 = try integer("\(field) length")
        guard let bytes = buffer.readBytes(length: Int(count)) else {
            throw .init(.malformedFrame, "\(type) frame ends inside its \(field)")
        }
        return bytes
    }

    mutating func string(_ field: String) throws(LedgerWireDecodingError) -> String {
        let bytes = try bytes(field)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .init(.malformedFrame, "\(type) frame's \(field) is not UTF-8")
        }
        return text
    }

    mutating func flag(_ field: String) throws(LedgerWireDecodingError) -> Bool {
        let byte: UInt8 = try integer(field)
        guard byte <= 1 else { throw .init(.malformedFrame, "\(type) frame's \(field) is \(byte), not 0 or 1") }
        return byte == 1
    }

    mutating func message() throws(LedgerWireDecodingError) -> LedgerWireMessage {
        switch type {
        case .claim:
            let flags: UInt8 = try integer("flags")
            guard flags & ~7 == 0 else { throw .init(.malformedFrame, "claim flags 0x\(String(flags, radix: 16))") }
            let version: UInt8 = try integer("protocol version")
            guard (3...5).contains(version) else { throw .init(.malformedFrame, "claim for MQTT protocol level \(version)") }
            let expiry: UInt32 = try integer("expiry interval")
            let session = try string("session name")
            let username = flags & 2 != 0 ? try string("username") : nil
            let password = flags & 4 != 0 ? try bytes("password") : nil
            let remote = try string("remote address")
            return .claim(WireClaim(
                username: username, password: password, sessionName: session, protocolVersion: version,
                cleanStart: flags & 1 != 0, requestedExpiryInterval: expiry, remoteAddress: remote))
        case .claimAnswer:
            let outcomeByte: UInt8 = try integer("outcome")
            guard let outcome = WireClaimAnswer.Outcome(rawValue: outcomeByte) else {
                throw .init(.malformedFrame, "claim outcome \(outcomeByte)")
            }
            let rejection: UInt8 = try integer("rejection reason")
            let code: UInt8 = try integer("reason code")
            let present = try flag("session present")
            return .claimAnswer(WireClaimAnswer(
                outcome: outcome, rejectionReason: rejection, reasonCode: code, sessionPresent: present,
                connection: try integer("connection"), sequence: try integer("sequence"),
                expiryInterval: try integer("expiry interval"), replacedConnection: try integer("replaced connection")))
        case .release:
            let connection: UInt64 = try integer("connection")
            let reason: UInt8 = try integer("reason")
            let hasExpiry = try flag("expiry flag")
            let expiry: UInt32 = try integer("expiry interval")
            let session = try string("session name")
            let remote = try string("remote address")
            return .release(WireRelease(
                connection: connection, sessionName: session, reason: reason, newExpiryInterval: hasExpiry ? expiry : nil,
                remoteAddress: remote))
        case .releaseAnswer:
            let outcomeByte: UInt8 = try integer("outcome")
            guard let outcome = WireReleaseAnswer.Outcome(rawValue: outcomeByte) else {
                throw .init(.malformedFrame, "release outcome \(outcomeByte)")
            }
            return .releaseAnswer(WireReleaseAnswer(outcome: outcome, sequence: try integer("sequence")))
        case .authorize:
            let connection: UInt64 = try integer("connection")
            let actionByte: UInt8 = try integer("action")
            guard let action = WireAuthorize.Action(rawValue: actionByte) else {
                throw .init(.malformedFrame, "authorize action \(actionByte)")
            }
            return .authorize(WireAuthorize(connection: connection, action: action, topic: try string("topic")))
        case .authorizeAnswer:
            return .authorizeAnswer(try flag("allowed"))
        case .takenOver:
            let connection: UInt64 = try integer("connection")
            return .takenOver(connection: connection, sessionName: try string("session name"))
        case .error:
            let codeByte: UInt8 = try integer("error code")
            let detail = try string("detail")
            return .error(WireErrorCode(rawValue: codeByte) ?? .malformedFrame, detail)
        }
    }
}
