import MQTTCodec
import NIOCore

/// A transport that can say its last packets and close once they are written (how is its
/// own: a NIO channel's write promise, the epoll transport's close after flush), or close at
/// once.
protocol GracefulClose: AnyObject {
    /// Writes `packets` and closes once they are written; true when it is closed already.
    func writeThenClose(_ packets: [MQTTPacket]) -> Bool
    /// `timer` closes the transport anyway once the grace is over; a transport that hears
    /// when its last writes are done may cancel it then.
    func closingAnyway(_ timer: Scheduled<Void>)
    /// Closes now; what is not written is lost.
    func closeAtOnce()
}

extension GracefulClose {
    /// Says `packets` and closes. A client that does not read them must not keep its socket,
    /// nor hold up the takeover of its session, for ever: closed anyway after `grace`.
    func close(sending packets: [MQTTPacket], grace: TimeAmount, on eventLoop: any EventLoop) {
        guard !writeThenClose(packets) else { return }
        let bound = NIOLoopBound<any GracefulClose>(self, eventLoop: eventLoop)
        closingAnyway(eventLoop.scheduleTask(in: grace) { bound.value.closeAtOnce() })
    }
}
