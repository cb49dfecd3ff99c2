import Authorization
import Broker
import MQTTCodec

/// What a SUBSCRIBE may ask (README "Limits").
public struct SubscribeLimits: Sendable, Equatable {
    /// `limits.maxFiltersPerSubscribe`: filters past it get 0x97 Quota exceeded (3.1.1: 0x80).
    public var maxFiltersPerSubscribe = 10
    /// `limits.maxTopicBytes` / `maxTopicLevels`: a longer or deeper filter gets 0x8F Topic
    /// Filter invalid (3.1.1: 0x80).
    public var maxTopicBytes = 256
    public var maxTopicLevels = 15

    public init(maxFiltersPerSubscribe: Int = 10, maxTopicBytes: Int = 256, maxTopicLevels: Int = 15) {
        self.maxFiltersPerSubscribe = maxFiltersPerSubscribe
        self.maxTopicBytes = maxTopicBytes
        self.maxTopicLevels = maxTopicLevels
    }
}

/// The front's checks of one SUBSCRIBE before the broker sees it, filter by filter: the
/// filters-per-SUBSCRIBE limit, the filter length and depth limits, then authorization.
/// Filters that pass go to the broker in a SUBSCRIBE of their own; its SUBACK is then
/// merged back, so the client gets one code per filter, in its order.
struct SubscribeScreen {
    typealias Limits = SubscribeLimits

    enum Refusal: Equatable {
        case tooManyFilters(limit: Int)
        case tooLong(bytes: Int, limit: Int)
        case tooDeep(levels: Int, limit: Int)
        case notAuthorized(AuthorizationDecision)

        /// The `limits:` key for a limit (`custody_limit_exceeded_total{limit}`); nil for a denial.
        var limit: String? {
            switch self {
            case .tooManyFilters: "maxFiltersPerSubscribe"
            case .tooLong: "maxTopicBytes"
            case .tooDeep: "maxTopicLevels"
            case .notAuthorized: nil
            }
        }

        func code(_ version: MQTTProtocolVersion) -> MQTTReasonCode {
            guard version == .mqtt5 else { return .unspecifiedError }
            switch self {
            case .tooManyFilters: return .quotaExceeded
            case .tooLong, .tooDeep: return .topicFilterInvalid
            case .notAuthorized: return .notAuthorized
            }
        }
    }

    /// Per filter of the client's SUBSCRIBE: the code it gets here, or nil when the broker decides.
    private(set) var codes: [MQTTReasonCode?] = []
    private(set) var refusals: [(filter: String, refusal: Refusal)] = []
    /// What the broker gets; nil when every filter was refused here.
    private(set) var forwarded: MQTTSubscribe?
    let packetIdentifier: UInt16

    /// `permissions` nil: authorization is open. Filters of the server's own topics
    /// (`$custody/...`) keep the broker's rule (event subscribers), not the bindings'.
    init(_ subscribe: MQTTSubscribe, permissions: ClientPermissions?, limits: Limits, version: MQTTProtocolVersion) {
        packetIdentifier = subscribe.packetIdentifier
        var passed: [MQTTSubscription] = []
        codes.reserveCapacity(subscribe.subscriptions.count)
        for (index, subscription) in subscribe.subscriptions.enumerated() {
            let filter = subscription.topicFilter
            if let refusal = Self.check(filter, index: index, permissions: permissions, limits: limits) {
                codes.append(refusal.code(version))
                refusals.append((filter, refusal))
            } else {
                codes.append(nil)
                passed.append(subscription)
            }
        }
        if refusals.isEmpty {
            forwarded = subscribe
        } else if !passed.isEmpty {
            forwarded = MQTTSubscribe(
                packetIdentifier: subscribe.packetIdentifier, subscriptions: passed, properties: subscribe.properties)
        }
    }

    private static func check(_ filter: String, index: Int, permissions: ClientPermissions?, limits: Limits) -> Refusal? {
        if index >= limits.maxFiltersPerSubscribe { return .tooManyFilters(limit: limits.maxFiltersPerSubscribe) }
        let bytes = filter.utf8.count
        if bytes > limits.maxTopicBytes { return .tooLong(bytes: bytes, limit: limits.maxTopicBytes) }
        let inner = unshared(filter)
        let levels = inner.utf8.count(where: { $0 == UInt8(ascii: "/") }) + 1
        if levels > limits.maxTopicLevels { return .tooDeep(levels: levels, limit: limits.maxTopicLevels) }
        guard let permissions, !isServerTopic(inner) else { return nil }
        let decision = permissions.maySubscribe(filter)
        return decision.isAllowed ? nil : .notAuthorized(decision)
    }

    /// The filter a shared subscription (`$share/NAME/F`) applies, F; any other filter itself.
    static func unshared(_ filter: String) -> Substring {
        guard filter.hasPrefix("$share/") else { return filter[...] }
        let rest = filter.dropFirst("$share/".count)
        guard let slash = rest.firstIndex(of: "/") else { return filter[...] }
        return rest[rest.index(after: slash)...]
    }

    static func isServerTopic(_ filter: Substring) -> Bool {
        filter.hasPrefix(Broker.serverTopicPrefix) || filter == "$custody"
    }

    /// The client's SUBACK: the broker's codes (for what it was given) in the places left open.
    func merged(with brokerAnswer: MQTTSubAck?) -> MQTTSubAck {
        var fromBroker = (brokerAnswer?.reasonCodes ?? [])[...]
        let all = codes.map { code in code ?? fromBroker.popFirst() ?? .unspecifiedError }
        return MQTTSubAck(
            packetIdentifier: packetIdentifier, reasonCodes: all, properties: brokerAnswer?.properties ?? [])
    }
}
