/// The longest session or authentication name Event Grid accepts, in characters.
public let maximumNameLength = 128

/// Why a name was refused. Kept apart from `RejectionReason` because a name can be
/// bad before there is any session to reject.
public enum NameProblem: Error, Equatable, Sendable {
    case empty
    case tooLong(characters: Int)
    case containsNullCharacter
}

/// Counts characters as Unicode scalars: the MQTT wire format speaks of code points,
/// and grapheme clustering would let one "character" hide many bytes.
private func checkName(_ text: String) -> NameProblem? {
    if text.isEmpty { return .empty }
    // Short cut for the usual ASCII name: one byte per scalar.
    let utf8 = text.utf8
    if utf8.count <= maximumNameLength, !utf8.contains(where: { $0 == 0 || $0 >= 0x80 }) { return nil }
    var count = 0
    for scalar in text.unicodeScalars {
        if scalar.value == 0 { return .containsNullCharacter }
        count += 1
    }
    if count > maximumNameLength { return .tooLong(characters: count) }
    return nil
}

/// The MQTT ClientID. Unique across the broker, compared exactly (case-sensitive).
public struct SessionName: Hashable, Sendable, CustomStringConvertible {
    public let value: String
    /// `nameHash` of the UTF-8 bytes, computed once. Dictionaries keyed by session name
    /// (the replay's projection above all) compare it before the text, so probing past
    /// other names costs an integer compare instead of a memcmp.
    @usableFromInline let fingerprint: UInt64

    public init(validating text: String) throws(NameProblem) {
        if let problem = checkName(text) { throw problem }
        self.init(unchecked: text)
    }

    /// For names read back from the ledger, which were validated when first written,
    /// and for rejected events that record the offending name as it came.
    public init(unchecked text: String) {
        var text = text
        self.fingerprint = text.withUTF8 { nameHash(UnsafeRawBufferPointer($0)) }
        self.value = text
    }

    public var isValid: Bool { checkName(value) == nil }

    @inlinable public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.fingerprint == rhs.fingerprint && lhs.value == rhs.value
    }

    @inlinable public func hash(into hasher: inout Hasher) { hasher.combine(fingerprint) }

    public var description: String { value }
}

/// Who the client is. Compared case-insensitively, kept and shown with its original case.
public struct AuthenticationName: Hashable, Sendable, CustomStringConvertible {
    public let value: String
    /// The comparison key: identities that differ only by case are the same client.
    public let key: String

    public init(validating text: String) throws(NameProblem) {
        if let problem = checkName(text) { throw problem }
        self.init(unchecked: text)
    }

    public init(unchecked text: String) {
        self.value = text
        self.key = lowerCasedForComparison(text)
    }

    public var isValid: Bool { checkName(value) == nil }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.key == rhs.key }
    public func hash(into hasher: inout Hasher) { hasher.combine(key) }
    public var description: String { value }
}

/// Identifies one network connection for the life of the ledger; never reused.
public typealias ConnectionNumber = UInt64

/// Lower-cases for comparison. Most names are ASCII and often already lower case:
/// those keep the same storage instead of paying for Unicode case mapping.
func lowerCasedForComparison(_ text: String) -> String {
    var hasUpper = false
    for byte in text.utf8 {
        if byte >= 0x80 { return text.lowercased() }
        if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { hasUpper = true }
    }
    guard hasUpper else { return text }
    let bytes = text.utf8.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 + 32 : $0 }
    return String(decoding: bytes, as: UTF8.self)
}
