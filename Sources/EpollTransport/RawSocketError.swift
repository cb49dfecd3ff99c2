#if os(Linux)
import Glibc

/// A system call of the epoll transport failed: `bind: Address already in use (errno 98)`.
public struct RawSocketError: Error, CustomStringConvertible {
    public var description: String
    /// The errno the call failed with; 0 when the error is not a system call's.
    public var code: Int32 = 0
    public init(_ description: String) { self.description = description }

    public init(_ call: String, errno code: Int32) {
        self.description = "\(call): \(String(cString: strerror(code))) (errno \(code))"
        self.code = code
    }
}
#endif
