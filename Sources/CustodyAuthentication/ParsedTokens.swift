import ExtrasBase64
import JWTKit
import Synchronization

/// What jwt-kit parsed of tokens seen before, by their signing input (header and claims as
/// sent): a device that comes back with the same token costs a signature check, not a parse.
/// The signature is still checked every time, over these very bytes, and the claims' times
/// are checked every time too; only the decoding of bytes already decoded is saved. Bounded:
/// when full it starts again empty.
final class ParsedTokens: Sendable {
    struct Parsed: Sendable {
        var header: JWTHeader
        var claims: TokenClaims
    }

    static let capacity = 4096
    private let parsed = Mutex<[ArraySlice<UInt8>: Parsed]>([:])

    /// The token split at its last dot: the signing input and the signature, decoded; nil for
    /// what has no dot or whose signature is not base64url.
    static func split(_ token: [UInt8]) -> (signingInput: ArraySlice<UInt8>, signature: [UInt8])? {
        guard let dot = token.lastIndex(of: UInt8(ascii: ".")),
            let signature = try? Base64.decode(
                bytes: token[(dot + 1)...], options: [.base64UrlAlphabet, .omitPaddingCharacter])
        else { return nil }
        return (token[..<dot], signature)
    }

    func lookUp(_ signingInput: ArraySlice<UInt8>) -> Parsed? {
        parsed.withLock { $0[signingInput] }
    }

    func keep(_ signingInput: ArraySlice<UInt8>, _ value: Parsed) {
        parsed.withLock { table in
            if table.count >= Self.capacity { table.removeAll(keepingCapacity: true) }
            table[ArraySlice(Array(signingInput))] = value
        }
    }
}
