import Testing

@testable import Broker

@Suite("LazyFIFO")
struct LazyFIFOTests {
    @Test func anEmptyQueueHasNoStorage() {
        let queue = LazyFIFO<Int>()
        #expect(queue.isEmpty)
        #expect(queue.count == 0)
        #expect(queue.first == nil)
        #expect(queue.buffer == nil)
        #expect(Array(queue) == [])
    }

    @Test func firstInFirstOut() {
        var queue = LazyFIFO<Int>()
        for i in 1...10 { queue.append(i) }
        #expect(queue.count == 10)
        #expect(queue.first == 1)
        #expect(Array(queue) == Array(1...10))
        #expect(queue.popFirst() == 1)
        #expect(queue.removeFirst() == 2)
        queue.append(11)
        #expect(Array(queue) == Array(3...11))
        while queue.popFirst() != nil {}
        #expect(queue.isEmpty)
        #expect(queue.popFirst() == nil)
    }

    @Test func removeAllFreesOrKeepsTheStorage() {
        var queue = LazyFIFO<Int>(initialCapacity: 8)
        queue.append(1)
        queue.removeAll(keepingCapacity: true)
        #expect(queue.isEmpty)
        #expect(queue.buffer != nil)
        queue.append(2)
        #expect(Array(queue) == [2])
        queue.removeAll()
        #expect(queue.isEmpty)
        #expect(queue.buffer == nil)
    }

    @Test func iteratingDoesNotConsume() {
        var queue = LazyFIFO<String>()
        queue.append("a")
        queue.append("b")
        #expect(queue.map { $0 } == ["a", "b"])
        #expect(queue.count == 2)
    }
}
