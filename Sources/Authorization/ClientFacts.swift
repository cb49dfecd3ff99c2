/// One value of a client's attribute, as the client registry gives it.
///
/// Booleans from the configuration become `.string("true")` / `.string("false")` (use
/// ``bool(_:)``): Event Grid's queries have no boolean literal, so `attributes.enabled = 'true'`
/// is how a query tests one, and keeping three cases keeps every comparison rule in one place.
public enum AttributeValue: Sendable, Equatable, Hashable {
    case string(String)
    case int(Int)
    /// An array attribute (Event Grid allows arrays of strings only).
    case strings([String])

    /// A configuration boolean, as the string a query compares it with.
    public static func bool(_ value: Bool) -> AttributeValue { .string(value ? "true" : "false") }

    /// As one string (an array's items joined by commas): for routes' extension attributes.
    public var text: String {
        switch self {
        case .string(let value): value
        case .int(let value): "\(value)"
        case .strings(let values): values.joined(separator: ",")
        }
    }
}

/// What authorization knows of one connected client; computed once per CONNECT.
public struct ClientFacts: Sendable, Equatable {
    /// Who the client is (DESIGN §1); compared case-insensitively everywhere.
    public var authenticationName: String
    /// The CONNECT ClientID; Mosquitto's `%c`.
    public var sessionName: String
    public var attributes: [String: AttributeValue]

    public init(authenticationName: String, sessionName: String, attributes: [String: AttributeValue] = [:]) {
        self.authenticationName = authenticationName
        self.sessionName = sessionName
        self.attributes = attributes
    }
}
