import CustodyTesting
import Foundation
import LedgerCore
import LMDBStorage
import MQTTCodec
import NIOCore
import Testing

@testable import Broker

/// Will delays run on the broker's clock: these tests move a `ManualClock` and call
/// `fireDueTimers()` instead of waiting.
@Suite("Will messages")
struct WillTests {
    let clock = ManualClock()
    func will(
        _ body: String, topic: String = "will/c", qos: MQTTQoS = .atLeastOnce, retain: Bool = false, delay: UInt32? = nil,
        properties: MQTTProperties = []
    ) -> MQTTWill {
        var props = properties
        if let delay { props.willDelayInterval = delay }
        return MQTTWill(topic: topic, payload: payload(body), qos: qos, retain: retain, properties: props)
    }

    /// A subscriber to `will/#` and the broker, whose timers fire only when told.
    func setUp(directory: String? = nil) async throws -> (Broker, Client) {
        let broker = try Broker(directory: directory, clock: { [clock] in clock.now }, timers: .manual)
        let watcher = broker.connect("watcher")
        _ = try await watcher.session.handle(subscribe([("will/#", .exactlyOnce)]))
        return (broker, watcher)
    }

    @Test func aLostConnectionPublishesTheWill() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c")
        let props: MQTTProperties = [
            .contentType("text/plain"), .userProperty(MQTTUserProperty(name: "why", value: "lost")),
            .responseTopic("r/c"), .correlationData(payload("corr")),
        ]
        client.session.setWill(will("gone", delay: 0, properties: props))
        #expect(watcher.sink.take().isEmpty)
        broker.detach(client.session)  // lost connection, keep-alive timeout, protocol error…
        let got = watcher.sink.takePublishes()
        #expect(got.map(text) == ["gone"])
        #expect(got.first?.topicName == "will/c")
        #expect(got.first?.qos == .atLeastOnce)
        #expect(got.first?.properties.willDelayInterval == nil)
        #expect(got.first?.properties.contentType == "text/plain")
        #expect(got.first?.properties.responseTopic == "r/c")
        #expect(got.first?.properties.correlationData == payload("corr"))
        #expect(got.first?.properties.contains(.userProperty) == true)
        #expect(broker.publishedWills == 1)
    }

    @Test func aNormalDisconnectDiscardsTheWill() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("gone", delay: 5))
        broker.detach(client.session, publishWill: false)  // DISCONNECT 0x00
        #expect(watcher.sink.take().isEmpty)
        #expect(broker.info(name("c"))?.willPending == false)
        try await broker.endSession(name("c"))
        #expect(watcher.sink.take().isEmpty)
        #expect(broker.publishedWills == 0)
    }

    @Test func disconnectWithWillMessagePublishesIt() async throws {
        // DISCONNECT 0x04: the front detaches with publishWill: true. A retained will is kept.
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c")
        client.session.setWill(will("bye", qos: .atMostOnce, retain: true))
        broker.detach(client.session, publishWill: true)
        #expect(watcher.sink.takePublishes().map(text) == ["bye"])
        let later = broker.connect("later")
        let answers = try await later.session.handle(subscribe([("will/c", .atMostOnce)]))
        #expect(answers.count == 2)
        if case .publish(let p) = answers.last { #expect(text(p) == "bye" && p.retain) }
    }

    @Test func aNonPersistentSessionSendsItsWillAtOnceWhateverTheDelay() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c")
        client.session.setWill(will("now", delay: 3600))
        broker.detach(client.session)
        #expect(watcher.sink.takePublishes().map(text) == ["now"])
    }

    @Test func theWillWaitsForItsDelay() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("late", delay: 1))
        broker.detach(client.session)
        #expect(watcher.sink.take().isEmpty)
        #expect(broker.info(name("c"))?.willPending == true)
        clock.advance(milliseconds: 999)
        broker.fireDueTimers()
        #expect(watcher.sink.take().isEmpty)
        #expect(broker.info(name("c"))?.willPending == true)
        clock.advance(milliseconds: 1)
        broker.fireDueTimers()
        #expect(watcher.sink.takePublishes().map(text) == ["late"])
        #expect(broker.info(name("c"))?.willPending == false)
        #expect(broker.publishedWills == 1)
    }

    @Test func theDelayIsBoundedByTheSessionExpiry() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("bounded", delay: 3600), sessionExpiryInterval: 1)
        broker.detach(client.session)
        clock.advance(milliseconds: 999)
        broker.fireDueTimers()
        #expect(watcher.sink.take().isEmpty)
        clock.advance(milliseconds: 1)
        broker.fireDueTimers()
        #expect(watcher.sink.takePublishes().map(text) == ["bounded"])
    }

    @Test func resumingTheSessionBeforeTheDelayCancelsTheWill() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("never", delay: 1))
        broker.detach(client.session)
        let back = broker.connect("c", persistent: true, present: true)
        #expect(broker.info(name("c"))?.willPending == false)
        clock.advance(seconds: 2)
        broker.fireDueTimers()
        #expect(watcher.sink.take().isEmpty)
        // The new connection has no will until it sets one.
        broker.detach(back.session)
        #expect(watcher.sink.take().isEmpty)
        #expect(broker.publishedWills == 0)
    }

    @Test func aCleanStartBeforeTheDelayPublishesTheWill() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("old session", delay: 3600))
        broker.detach(client.session)
        _ = broker.connect("c", persistent: true, present: false)
        #expect(watcher.sink.takePublishes().map(text) == ["old session"])
    }

    @Test func theSessionEndingBeforeTheDelayPublishesTheWill() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        let (broker, watcher) = try await setUp(directory: directory)
        defer { broker.close() }
        // A persistent subscriber gets it durably, after the commit.
        let durable = broker.connect("durable", persistent: true)
        _ = try await durable.session.handle(subscribe([("will/#", .atLeastOnce)]))
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("ended", delay: 3600))
        broker.detach(client.session)
        #expect(watcher.sink.take().isEmpty)
        try await broker.endSession(name("c"))
        #expect(watcher.sink.takePublishes().map(text) == ["ended"])
        #expect(broker.info(name("c")) == nil)
        var got: [MQTTPublish] = []
        for _ in 0..<300 where got.isEmpty {
            got = durable.sink.takePublishes()
            if got.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(got.map(text) == ["ended"])
    }

    @Test func aTakeoverPublishesTheOldConnectionsWillUnlessResumedWithinTheDelay() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        let first = broker.connect("c", persistent: true)
        first.session.setWill(will("delayed", delay: 60))
        // Resumed by the new connection within the delay: not sent.
        let second = broker.connect("c", persistent: true, present: true)
        #expect(watcher.sink.take().isEmpty)
        second.session.setWill(will("immediate", delay: 0))
        // No delay: sent at the takeover.
        let third = broker.connect("c", persistent: true, present: true)
        #expect(watcher.sink.takePublishes().map(text) == ["immediate"])
        third.session.setWill(will("clean start", delay: 60))
        // A clean start ends the session: sent whatever the delay.
        _ = broker.connect("c", persistent: true, present: false)
        #expect(watcher.sink.takePublishes().map(text) == ["clean start"])
        // The stale connections' detach does nothing.
        broker.detach(first.session)
        broker.detach(third.session)
        #expect(watcher.sink.take().isEmpty)
    }

    @Test func aV311ClientsWillAndNoLocal() async throws {
        let (broker, watcher) = try await setUp()
        defer { broker.close() }
        // A 3.1.1 will (no properties, no delay) goes at once.
        let old = broker.connect("old", version: .mqtt3_1_1)
        old.session.setWill(MQTTWill(topic: "will/old", payload: payload("v3"), qos: .exactlyOnce, retain: false))
        broker.detach(old.session)
        let got = watcher.sink.takePublishes()
        #expect(got.map(text) == ["v3"])
        #expect(got.first?.qos == .exactlyOnce)
        // The will's own session is its publisher: its No Local subscription skips it after a
        // takeover that resumes the session (the old connection's will has no delay).
        let first = broker.connect("self", persistent: true)
        _ = try await first.session.handle(subscribe([("will/self", .atMostOnce)], noLocal: true))
        first.session.setWill(will("mine", topic: "will/self", qos: .atMostOnce))
        let second = broker.connect("self", persistent: true, present: true)
        #expect(watcher.sink.takePublishes().map(text) == ["mine"])
        #expect(second.sink.take().isEmpty)
    }

    @Test func closingTheBrokerPublishesWaitingWills() async throws {
        let (broker, watcher) = try await setUp()
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will("shutdown", qos: .atMostOnce, delay: 3600))
        broker.detach(client.session)
        #expect(watcher.sink.take().isEmpty)
        broker.close()
        #expect(watcher.sink.takePublishes().map(text) == ["shutdown"])
    }
}

@Suite("Will messages in the store")
struct StoredWillTests {
    let clock = ManualClock()

    /// A broker on the test's clock whose timers fire only when told (`.dispatch`: on their own).
    func broker(_ directory: String, timers: BrokerTimerDriver = .manual, wills: StoredWills = .publish) throws -> Broker {
        try Broker(directory: directory, clock: { [clock] in clock.now }, timers: timers, wills: wills)
    }

    /// A broker that stops with session "c" holding `will`: its connection lost first
    /// (`detach`), or still up at the stop.
    func stop(_ directory: String, with will: MQTTWill, detach: Bool = true) throws {
        let broker = try broker(directory)
        let client = broker.connect("c", persistent: true)
        client.session.setWill(will)
        if detach { broker.detach(client.session) }
        broker.close()
    }

    func delayed(_ body: String, _ delay: UInt32) -> MQTTWill {
        MQTTWill(topic: "will/c", payload: payload(body), qos: .atLeastOnce, properties: [.willDelayInterval(delay), .contentType("t")])
    }

    func willRecords(_ directory: String) throws -> Int {
        let store = try BrokerStore(directory: directory)
        defer { store.close() }
        var count = 0
        try store.forEach(.sessions) { key, _ in
            if key.count >= 2, key[key.count - 2] == 0, key[key.count - 1] == UInt8(ascii: "W") { count += 1 }
        }
        return count
    }

    @Test func aDelayedWillSurvivesARestartAndGoesWhenDue() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        try stop(directory, with: delayed("after restart", 2))  // not published: it is in the store
        #expect(try willRecords(directory) == 1)
        let broker = try broker(directory)
        defer { broker.close() }
        #expect(broker.info(name("c"))?.willPending == true)
        let watcher = broker.connect("watcher")
        _ = try await watcher.session.handle(subscribe([("will/#", .atLeastOnce)]))
        clock.advance(milliseconds: 1999)
        broker.fireDueTimers()
        #expect(watcher.sink.take().isEmpty)
        clock.advance(milliseconds: 1)
        broker.fireDueTimers()
        let got = watcher.sink.takePublishes()
        #expect(got.map(text) == ["after restart"])
        #expect(got.first?.properties.contentType == "t")
        #expect(got.first?.properties.willDelayInterval == nil)
        #expect(broker.info(name("c"))?.willPending == false)
    }

    @Test func aStopWhileConnectedSchedulesTheWillAndAResumeCancelsIt() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        try stop(directory, with: delayed("never", 3600), detach: false)  // the process stops with the connection up
        #expect(try willRecords(directory) == 1)
        do {
            let broker = try broker(directory)
            #expect(broker.info(name("c"))?.willPending == true)
            let back = broker.connect("c", persistent: true, present: true)
            #expect(broker.info(name("c"))?.willPending == false)
            broker.detach(back.session, publishWill: false)
            #expect(broker.publishedWills == 0)
            broker.close()
        }
        #expect(try willRecords(directory) == 0)
    }

    /// A cluster node started again after it died: the wills of sessions that were connected
    /// then and that a survivor ended are the survivor's to send (`StoredWills.publishOnlyFor`
    /// without them), and go from the store; a will that was already counting down (its
    /// connection had ended) is still this node's, as is one whose connection it ended itself.
    @Test func onAClusterTheWillsOfConnectionsUpAtTheStopAreLeftToTheSurvivors() async throws {
        let up = scratchDirectory()
        let ended = scratchDirectory()
        defer {
            removeDirectory(up)
            removeDirectory(ended)
        }
        try stop(up, with: delayed("connected at the stop", 2), detach: false)
        try stop(ended, with: delayed("counting down", 2))
        for directory in [up, ended] {
            let broker = try broker(directory, wills: .publishOnlyFor([]))
            let watcher = broker.connect("watcher")
            _ = try await watcher.session.handle(subscribe([("will/#", .atLeastOnce)]))
            #expect(broker.info(name("c"))?.willPending == (directory == ended))
            clock.advance(seconds: 3)
            broker.fireDueTimers()
            #expect(watcher.sink.takePublishes().map(text) == (directory == ended ? ["counting down"] : []))
            broker.close()
            #expect(try willRecords(directory) == 0)
        }
        // Ended by this node itself at its start: its will goes from here, after its delay.
        let own = scratchDirectory()
        defer { removeDirectory(own) }
        try stop(own, with: delayed("ended here", 2), detach: false)
        let broker = try broker(own, wills: .publishOnlyFor([name("c")]))
        defer { broker.close() }
        let watcher = broker.connect("watcher")
        _ = try await watcher.session.handle(subscribe([("will/#", .atLeastOnce)]))
        #expect(broker.info(name("c"))?.willPending == true)
        clock.advance(seconds: 3)
        broker.fireDueTimers()
        #expect(watcher.sink.takePublishes().map(text) == ["ended here"])
    }

    @Test func aSessionTheLedgerDroppedAtStartupSendsItsWill() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        try stop(directory, with: delayed("expired meanwhile", 3600))
        let broker = try broker(directory)
        defer { broker.close() }
        let watcher = broker.connect("watcher")
        _ = try await watcher.session.handle(subscribe([("will/#", .atMostOnce)]))
        try await broker.retainOnly(live: [name("watcher")])
        #expect(watcher.sink.takePublishes().map(text) == ["expired meanwhile"])
        #expect(broker.publishedWills == 1)
    }

    /// Production's driver: a dispatch timer armed by the broker's clock. The will was due
    /// before the restart, so the timer fires at once; only its (asynchronous) firing is waited for.
    @Test func theDispatchTimerPublishesAWillThatIsDue() async throws {
        let directory = scratchDirectory()
        defer { removeDirectory(directory) }
        try stop(directory, with: delayed("due", 5))
        clock.advance(seconds: 10)
        // Nobody can subscribe before the load schedules it: the count tells it went.
        let broker = try broker(directory, timers: .dispatch)
        defer { broker.close() }
        var pending = true
        for _ in 0..<500 where pending {
            pending = broker.info(name("c"))?.willPending ?? false
            if pending { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(!pending)
        #expect(broker.publishedWills == 1)
    }
}
