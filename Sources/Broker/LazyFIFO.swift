import NIOCore

/// A FIFO whose storage is allocated by the first `append`: most sessions never queue a
/// message and most connections never queue a packet, and with thousands of them an empty
/// buffer each would be an allocation per connect for nothing.
///
/// Inlinable so that the front's `LazyFIFO<MQTTPacket>` is specialised in its module, not
/// called through generic witness tables on the hot path.
public struct LazyFIFO<Element>: Sequence {
    @usableFromInline
    var buffer: CircularBuffer<Element>?

    @inlinable
    public init() {}

    /// Storage for `initialCapacity` elements at once (a queue rebuilt with a known size).
    @inlinable
    public init(initialCapacity: Int) {
        buffer = CircularBuffer(initialCapacity: initialCapacity)
    }

    @inlinable
    public var count: Int { buffer?.count ?? 0 }

    @inlinable
    public var isEmpty: Bool { buffer?.isEmpty ?? true }

    @inlinable
    public var first: Element? { buffer?.first }

    @inlinable
    public mutating func append(_ element: Element) {
        if buffer == nil { buffer = CircularBuffer(initialCapacity: 4) }
        buffer!.append(element)
    }

    /// At the head, before every other element.
    @inlinable
    public mutating func prepend(_ element: Element) {
        if buffer == nil { buffer = CircularBuffer(initialCapacity: 4) }
        buffer!.prepend(element)
    }

    @inlinable
    public mutating func popFirst() -> Element? {
        buffer?.popFirst()
    }

    /// The first element, which must be there.
    @inlinable
    @discardableResult
    public mutating func removeFirst() -> Element {
        buffer!.removeFirst()
    }

    /// `keepingCapacity`: keep the storage for the next elements (a queue that is likely to
    /// fill again); otherwise it is freed, as if nothing had ever been appended.
    @inlinable
    public mutating func removeAll(keepingCapacity: Bool = false) {
        if keepingCapacity {
            buffer?.removeAll(keepingCapacity: true)
        } else {
            buffer = nil
        }
    }

    @inlinable
    public func makeIterator() -> Iterator {
        Iterator(base: buffer?.makeIterator())
    }

    public struct Iterator: IteratorProtocol {
        @usableFromInline
        var base: CircularBuffer<Element>.Iterator?

        @inlinable
        init(base: CircularBuffer<Element>.Iterator?) {
            self.base = base
        }

        @inlinable
        public mutating func next() -> Element? {
            base?.next()
        }
    }
}

extension LazyFIFO: Sendable where Element: Sendable {}
