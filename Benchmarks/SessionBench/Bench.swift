import ArgumentParser

@main
struct CustodyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custody-bench",
        abstract: "Measures session throughput of Custody (and, later, of any MQTT broker).",
        subcommands: [
            LedgerBench.self, ReplayBench.self, LedgerCrashChild.self, LedgerYearsBench.self, LedgerArchiveFixture.self,
            ConnectLoad.self, PersistentLoad.self, TakeoverLoad.self, RejectLoad.self, HoldLoad.self, PublishLoad.self,
            OfflineQueueLoad.self, CompareLoad.self, LedgerSocketBench.self, SignToken.self, StoreCrashChild.self,
            HTTPSink.self, EtcdTxnBench.self, NATSPublishBench.self,
        ]
    )
}
