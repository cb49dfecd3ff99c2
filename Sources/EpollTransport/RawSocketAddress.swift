#if os(Linux)
import Glibc

/// Socket addresses as log lines and ledger events write them: `IP:port`, `[IPv6]:port`.
enum RawSocketAddress {
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
