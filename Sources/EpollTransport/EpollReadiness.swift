#if os(Linux)
/// What an `EpollEventLoop` calls when a file descriptor it watches is ready (on the loop).
public protocol EpollReadiness: AnyObject {
    /// `events`: the epoll bits that are set (EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP).
    func ready(_ events: UInt32)
    /// Asked for with `EpollEventLoop.afterEvents`: runs once the current events are handled.
    func afterEvents()
}

extension EpollReadiness {
    public func afterEvents() {}
}
#endif
