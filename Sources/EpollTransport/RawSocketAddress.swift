#if os(Linux)
import Glibc

/// Socket addresses as log lines and ledger events write them: `IP:port`, `[IPv6]:port`.
public enum RawSocketAddress {
    static func port(of storage: sockaddr_storage) -> Int {
        let family = Int32(storage.ss_family)
        return withUnsafePointer(to: storage) { pointer in
            switch family {
            case AF_INET:
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6:
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default:
                0
            }
        }
    }

    /// The local end of a connected socket (`getsockname`) as `IP:port`.
    public static func localText(of descriptor: Int32) -> String? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return result == 0 ? text(of: storage) : nil
    }

    static func text(of storage: sockaddr_storage) -> String? {
        let family = Int32(storage.ss_family)
        func ip(_ address: UnsafeRawPointer) -> String? {
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { text in
                guard inet_ntop(family, address, text.baseAddress, socklen_t(text.count)) != nil else { return nil }
                return String(cString: text.baseAddress!)
            }
        }
        return withUnsafePointer(to: storage) { pointer -> String? in
            switch family {
            case AF_INET:
                return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address -> String? in
                    var raw = address.pointee.sin_addr
                    guard let ip = ip(&raw) else { return nil }
                    return "\(ip):\(UInt16(bigEndian: address.pointee.sin_port))"
                }
            case AF_INET6:
                return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address -> String? in
                    var raw = address.pointee.sin6_addr
                    guard let ip = ip(&raw) else { return nil }
                    return "[\(ip)]:\(UInt16(bigEndian: address.pointee.sin6_port))"
                }
            default:
                return nil
            }
        }
    }
}
#endif
