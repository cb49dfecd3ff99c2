import Crypto
import CryptoExtras
import Foundation

/// Usernames and salted password hashes in Mosquitto's format, so that a file written by
/// `mosquitto_passwd` works unchanged: one `username:$7$ITERATIONS$SALT$HASH` line each
/// (PBKDF2-HMAC-SHA512, base64 salt and hash), or the older `username:$6$SALT$HASH`
/// (SHA-512 over password and salt). No plain-text passwords are ever read or kept.
public struct PasswordFile: Sendable {
    enum Hash: Sendable, Equatable {
        case pbkdf2SHA512(iterations: Int, salt: [UInt8], hash: [UInt8])
        case sha512(salt: [UInt8], hash: [UInt8])
    }

    /// By username, exactly as written (MQTT usernames compare exactly in Mosquitto).
    private var entries: [String: Hash] = [:]

    public var usernames: [String] { entries.keys.sorted() }

    public init() {}

    public static func load(file path: String) throws(ConfigurationError) -> PasswordFile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(file: path, line: nil, key: nil, message: "cannot read the password file: \(error.localizedDescription)")
        }
        return try PasswordFile(parsing: text, file: path)
    }

    public init(parsing text: String, file: String) throws(ConfigurationError) {
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.isEmpty || line.hasPrefix("#") { continue }
            func fail(_ message: String) -> ConfigurationError {
                ConfigurationError(file: file, line: index + 1, key: nil, message: message)
            }
            guard let colon = line.firstIndex(of: ":") else { throw fail("expected username:hash") }
            let username = String(line[..<colon])
            guard !username.isEmpty else { throw fail("empty username") }
            guard entries[username] == nil else { throw fail("user '\(username)' is listed twice") }
            guard let hash = Self.parseHash(line[line.index(after: colon)...]) else {
                throw fail("the hash of '\(username)' is not $7$ITERATIONS$SALT$HASH or $6$SALT$HASH (as mosquitto_passwd writes)")
            }
            entries[username] = hash
        }
    }

    static func parseHash(_ text: Substring) -> Hash? {
        let parts = text.split(separator: "$", omittingEmptySubsequences: false)
        // "$7$101$salt$hash" splits into ["", "7", "101", "salt", "hash"].
        guard parts.first == "" else { return nil }
        switch parts.count {
        case 5 where parts[1] == "7":
            guard let iterations = Int(parts[2]), iterations > 0,
                  let salt = Data(base64Encoded: String(parts[3])), let hash = Data(base64Encoded: String(parts[4])),
                  !salt.isEmpty, hash.count == 64
            else { return nil }
            return .pbkdf2SHA512(iterations: iterations, salt: Array(salt), hash: Array(hash))
        case 4 where parts[1] == "6":
            guard let salt = Data(base64Encoded: String(parts[2])), let hash = Data(base64Encoded: String(parts[3])),
                  !salt.isEmpty, hash.count == 64
            else { return nil }
            return .sha512(salt: Array(salt), hash: Array(hash))
        default:
            return nil
        }
    }

    public func contains(_ username: String) -> Bool { entries[username] != nil }

    /// Whether `password` is `username`'s. Unknown users are refused after the same work,
    /// so that timing does not tell which usernames exist.
    public func verify(username: String, password: [UInt8]) -> Bool {
        let stored = entries[username] ?? .pbkdf2SHA512(iterations: 101, salt: Array(repeating: 0, count: 12), hash: Array(repeating: 0, count: 64))
        let computed: [UInt8]
        let expected: [UInt8]
        switch stored {
        case .pbkdf2SHA512(let iterations, let salt, let hash):
            guard let key = try? KDF.Insecure.PBKDF2.deriveKey(
                from: password, salt: salt, using: .sha512, outputByteCount: 64, unsafeUncheckedRounds: iterations)
            else { return false }
            computed = key.withUnsafeBytes { Array($0) }
            expected = hash
        case .sha512(let salt, let hash):
            var hasher = SHA512()
            hasher.update(data: password)
            hasher.update(data: salt)
            computed = Array(hasher.finalize())
            expected = hash
        }
        var difference: UInt8 = 0
        for (a, b) in zip(computed, expected) { difference |= a ^ b }
        return difference == 0 && computed.count == expected.count && entries[username] != nil
    }

    /// A `$7$` entry for `password` with a fresh random salt, as `mosquitto_passwd` makes.
    public static func entry(username: String, password: [UInt8], iterations: Int = 101) -> String {
        let salt = (0..<12).map { _ in UInt8.random(in: 0...255) }
        let key = try! KDF.Insecure.PBKDF2.deriveKey(
            from: password, salt: salt, using: .sha512, outputByteCount: 64, unsafeUncheckedRounds: iterations)
        let hash = key.withUnsafeBytes { Data($0) }
        return "\(username):$7$\(iterations)$\(Data(salt).base64EncodedString())$\(hash.base64EncodedString())"
    }
}
