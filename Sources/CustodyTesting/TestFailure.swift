/// Why a test helper gave up: something to run is missing, a wait timed out, or a peer
/// answered what the test did not expect.
public enum TestFailure: Error, CustomStringConvertible {
    case missing(String)
    case timeout(String)
    case unexpected(String)

    public var description: String {
        switch self {
        case .missing(let what): "missing: \(what)"
        case .timeout(let what): "timed out: \(what)"
        case .unexpected(let what): "unexpected: \(what)"
        }
    }
}
