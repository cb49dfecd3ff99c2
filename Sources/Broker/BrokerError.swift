import LedgerCore
import LMDBStorage
import MQTTCodec

/// A packet the broker refuses, or state it could not make durable. The front closes the
/// connection with `reasonCode` (in a v5 DISCONNECT) and logs `detail`.
public struct BrokerError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reasonCode: MQTTReasonCode
    public var detail: String

    public init(_ reasonCode: MQTTReasonCode, _ detail: String) {
        self.reasonCode = reasonCode
        self.detail = detail
    }

    static func storage(_ error: LedgerError) -> BrokerError {
        BrokerError(error.isMapFull ? .quotaExceeded : .unspecifiedError, "broker storage failed: \(error)")
    }

    public var description: String { "\(reasonCode): \(detail)" }
}
