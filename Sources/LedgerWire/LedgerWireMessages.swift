/// The ledger socket's protocol, version 1: what a front outside this process (the Mosquitto
/// plugin) asks the session ledger, and what it hears back. README.md ("The ledger socket")
/// documents the bytes; `LedgerWireFrame` reads and writes them.
public enum LedgerWire {
    /// The version every frame carries; a peer speaking another gets an error frame and is closed.
    public static let version: UInt8 = 1
    /// Largest frame body (after the length): a claim's strings fit with room to spare.
    public static let maximumBodyBytes = 64 << 10
    /// Version, type and request id: the body's first six bytes.
    public static let headerBytes = 6

    /// Frame types. Answers are their request's type with the high bit set.
    public enum FrameType: UInt8, Sendable {
        case claim = 0x01
        case release = 0x02
        case authorize = 0x03
        /// Unsolicited (request id 0): a connection granted to this peer lost its session to a
        /// claim elsewhere (R4); its release will record nothing.
        case takenOver = 0x04
        case claimAnswer = 0x81
        case releaseAnswer = 0x82
        case authorizeAnswer = 0x83
        case error = 0xFF
    }
}

/// A CONNECT, as the front saw it: who (Username, password), which session (ClientID) and how.
public struct WireClaim: Sendable, Equatable {
    public var username: String?
    public var password: [UInt8]?
    public var sessionName: String
    /// MQTT protocol level: 3 (3.1), 4 (3.1.1) or 5.
    public var protocolVersion: UInt8
    public var cleanStart: Bool
    /// Seconds; a 3.1.1 persistent session asks for UInt32.max (the policy caps it).
    public var requestedExpiryInterval: UInt32
    public var remoteAddress: String

    public init(
        username: String?, password: [UInt8]?, sessionName: String, protocolVersion: UInt8, cleanStart: Bool,
        requestedExpiryInterval: UInt32, remoteAddress: String
    ) {
        self.username = username
        self.password = password
        self.sessionName = sessionName
        self.protocolVersion = protocolVersion
        self.cleanStart = cleanStart
        self.requestedExpiryInterval = requestedExpiryInterval
        self.remoteAddress = remoteAddress
    }
}

/// The ledger's durable answer to a claim.
public struct WireClaimAnswer: Sendable, Equatable {
    public enum Outcome: UInt8, Sendable {
        case granted = 0
        case rejected = 1
        /// R8: nothing could be made durable; nothing is granted.
        case failed = 2
    }

    public var outcome: Outcome
    /// The ledger's `RejectionReason` (raw value); 0 unless rejected.
    public var rejectionReason: UInt8
    /// The MQTT 5 CONNACK reason code Custody's own front sends for this outcome.
    public var reasonCode: UInt8
    public var sessionPresent: Bool
    /// The connection number the ledger gave the claim (0 unless granted): a release names it.
    public var connection: UInt64
    /// The sequence number of the recorded event (0 when failed).
    public var sequence: UInt64
    /// The expiry interval in force (granted only).
    public var expiryInterval: UInt32
    /// R4: the connection that held the session until now (0: none).
    public var replacedConnection: UInt64

    public init(
        outcome: Outcome, rejectionReason: UInt8 = 0, reasonCode: UInt8, sessionPresent: Bool = false,
        connection: UInt64 = 0, sequence: UInt64 = 0, expiryInterval: UInt32 = 0, replacedConnection: UInt64 = 0
    ) {
        self.outcome = outcome
        self.rejectionReason = rejectionReason
        self.reasonCode = reasonCode
        self.sessionPresent = sessionPresent
        self.connection = connection
        self.sequence = sequence
        self.expiryInterval = expiryInterval
        self.replacedConnection = replacedConnection
    }
}

/// A connection ended.
public struct WireRelease: Sendable, Equatable {
    public var connection: UInt64
    public var sessionName: String
    /// The ledger's `DisconnectReason` (raw value).
    public var reason: UInt8
    /// A v5 DISCONNECT's Session Expiry Interval, when it carried one.
    public var newExpiryInterval: UInt32?
    public var remoteAddress: String

    public init(connection: UInt64, sessionName: String, reason: UInt8, newExpiryInterval: UInt32? = nil, remoteAddress: String = "") {
        self.connection = connection
        self.sessionName = sessionName
        self.reason = reason
        self.newExpiryInterval = newExpiryInterval
        self.remoteAddress = remoteAddress
    }
}

public struct WireReleaseAnswer: Sendable, Equatable {
    public enum Outcome: UInt8, Sendable {
        case recorded = 0
        /// The connection no longer held the session (taken over, or never granted here).
        case nothingToRecord = 1
        /// R8: the ledger could not record it.
        case failed = 2
    }

    public var outcome: Outcome
    public var sequence: UInt64

    public init(outcome: Outcome, sequence: UInt64 = 0) {
        self.outcome = outcome
        self.sequence = sequence
    }
}

/// May this connection publish to a topic, or subscribe to a filter?
public struct WireAuthorize: Sendable, Equatable {
    public enum Action: UInt8, Sendable {
        case publish = 1
        case subscribe = 2
    }

    public var connection: UInt64
    public var action: Action
    public var topic: String

    public init(connection: UInt64, action: Action, topic: String) {
        self.connection = connection
        self.action = action
        self.topic = topic
    }
}

/// Why a peer is being closed.
public enum WireErrorCode: UInt8, Sendable {
    case unsupportedVersion = 1
    case malformedFrame = 2
    case unknownFrameType = 3
    case frameTooLarge = 4
}

/// One frame's content.
public enum LedgerWireMessage: Sendable, Equatable {
    case claim(WireClaim)
    case release(WireRelease)
    case authorize(WireAuthorize)
    case claimAnswer(WireClaimAnswer)
    case releaseAnswer(WireReleaseAnswer)
    /// Allowed or not.
    case authorizeAnswer(Bool)
    /// R4, told to the peer whose connection lost its session (request id 0).
    case takenOver(connection: UInt64, sessionName: String)
    case error(WireErrorCode, String)
}

/// A frame: its request id (answers echo it) and its message.
public struct LedgerWireFrame: Sendable, Equatable {
    public var requestID: UInt32
    public var message: LedgerWireMessage

    public init(requestID: UInt32, message: LedgerWireMessage) {
        self.requestID = requestID
        self.message = message
    }
}
