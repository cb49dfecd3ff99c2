// swift-tools-version:6.1
import PackageDescription

// Arrows point down: executables -> MQTTFront -> Broker/SessionLedger -> LMDBStorage -> LedgerCore;
// MQTTFront -> EpollTransport (knows no MQTT) -> CEpoll.
// Only LMDBStorage sees CLMDB; LedgerCore is pure (no I/O). MQTTCodec imports NIOCore only.
let package = Package(
    name: "Custody",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "custody", targets: ["CustodyServer"]),
        .executable(name: "custody-audit", targets: ["CustodyAudit"]),
        .executable(name: "custody-bench", targets: ["SessionBench"]),
        .library(name: "SessionLedger", targets: ["SessionLedger"]),
        // Mosquitto loads it: `plugin /path/libcustody-mosquitto.so`, `plugin_opt_socket PATH`.
        .library(name: "custody-mosquitto", type: .dynamic, targets: ["CustodyMosquittoPlugin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        // zlib for the ledger's archive segments (LMDBStorage): a maintained wrapper, no compressor of ours.
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
        // Sign-in without certificates: JSON Web Tokens (JOSE, signatures) and the webhook's HTTP client.
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.7.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        // base64url of a token's signature (jwt-kit's own dependency).
        .package(url: "https://github.com/swift-extras/swift-extras-base64.git", from: "1.2.0"),
        // HTTP publish (`POST /mqtt/messages`): a maintained HTTP server, no HTTP parsing of ours.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLMDB",
            pkgConfig: "lmdb",
            providers: [.apt(["liblmdb-dev"])]
        ),
        .target(
            name: "LedgerCore",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            exclude: ["RECORD-FORMAT.md"]
        ),
        .target(
            name: "LMDBStorage",
            dependencies: [
                "CLMDB", "LedgerCore",
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "SessionLedger",
            dependencies: ["LedgerCore", "LMDBStorage"]
        ),
        // epoll and eventfd for the plain-TCP front's own event loop (headers only).
        .target(name: "CEpoll"),
        .target(
            name: "EpollTransport",
            // Custody's own event loop over epoll and the plain-TCP byte streams on it: no MQTT.
            dependencies: [
                "CEpoll",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "MQTTCodec",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "CustodyModel",
            // Small pure values the parts share: one host:port type, and who a CONNECT is
            // (credentials, certificate facts, the decision, the authority that makes it).
            dependencies: ["LedgerCore", "Authorization"]
        ),
        .target(
            name: "CustodyConfig",
            // The YAML configuration, the client registry and the password file: pure, no I/O
            // beyond reading the files it is given.
            dependencies: [
                "LedgerCore", "CustodyModel", "Authorization",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "CustodyAuthentication",
            // Sign-in without certificates: JSON Web Tokens checked with jwt-kit against keys
            // from JWKS and PEM files, and the webhook asked with async-http-client.
            dependencies: [
                "CustodyConfig", "CustodyModel", "LedgerCore",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "ExtrasBase64", package: "swift-extras-base64"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                "Authorization",
            ]
        ),
        .target(
            name: "CustodyTLS",
            // TLS listeners' contexts (swift-nio-ssl) and what a client certificate says of its holder.
            dependencies: [
                "CustodyConfig", "CustodyModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "CustodyOperations",
            // What operators watch: the ledger's metrics (swift-metrics) and the Prometheus
            // `/metrics` endpoint (swift-prometheus over NIOHTTP1).
            dependencies: [
                "LedgerCore", "Broker",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Broker",
            // Pub/sub: topic tree, subscriptions, QoS flows, queues; its LMDB store lives in LMDBStorage.
            dependencies: [
                "MQTTCodec", "LedgerCore", "LMDBStorage", .product(name: "NIOCore", package: "swift-nio"),
                // SHA-256 names the store keys of topics too long for LMDB (Records.swift).
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .target(
            name: "MQTTFront",
            dependencies: [
                "MQTTCodec", "Broker", "SessionLedger", "CustodyModel", "EpollTransport", "Authorization",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // MQTT over WebSocket: the HTTP upgrade and the frames.
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                // Counters of connections, CONNECTs, messages and bytes (FrontMetrics.swift).
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "LedgerWire",
            // The ledger socket's protocol (version 1, length-prefixed binary frames): pure.
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "LedgerService",
            // The ledger as a service: the Unix domain socket other fronts (Mosquitto with the
            // plugin) claim, release and ask authorization through, behind the one SessionAuthority.
            dependencies: [
                "LedgerWire", "SessionLedger", "CustodyModel", "Authorization",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "CustodyMosquittoPlugin",
            // C, against Debian's mosquitto-dev and libmosquitto-dev headers (Mosquitto 2.0 plugin
            // API v5); Mosquitto's own symbols are resolved when Mosquitto loads the library.
            dependencies: [],
            cSettings: [.unsafeFlags(["-Wall", "-Wextra"])]
        ),
        .target(
            name: "Routing",
            // Routes: accepted messages and lifecycle events as CloudEvents in a durable outbox
            // (the broker's LMDB store, in the message's own write), delivered in order by one
            // worker per route with async-http-client, retried, or dead-lettered.
            dependencies: [
                "Broker", "LedgerCore", "LMDBStorage", "MQTTCodec", "CustodyConfig", "Authorization",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "HTTPPublish",
            // Event Grid's HTTP publish: `POST /mqtt/messages?topic=T` served by Hummingbird 2,
            // its headers read into one MQTT PUBLISH handed to whoever accepts it.
            dependencies: [
                "MQTTCodec", "Authorization", "CustodyModel",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Authorization",
            // Event Grid's client groups, topic spaces and permission bindings, and Mosquitto's
            // acl_file: pure, no I/O, no dependency.
            dependencies: []
        ),
        .target(
            name: "EtcdGateway",
            // etcd's v3 JSON gateway (txn, range, leases, watch) over pooled HTTP/1.1 with
            // async-http-client: what the cluster decides ownership through. Knows no sessions.
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
        .target(
            name: "NATSClient",
            // A small NATS client on SwiftNIO (PUB/SUB, request/reply, reconnect) and the JetStream
            // API the cluster's messages use (streams, durable pull consumers, acked publishes).
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
        .target(
            name: "ClusterMessaging",
            // Messages across nodes (issue 19): the broker's cluster link on NATS JetStream and
            // the MQTT topic <-> NATS subject mapping.
            dependencies: [
                "Broker", "LedgerCore", "MQTTCodec", "NATSClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "ClusterOwnership",
            // The cluster's SessionAuthority: ownership decided by etcd Txns (EtcdGateway), each
            // decision recorded with its epoch in the node's own LMDB ledger (SessionLedger).
            dependencies: [
                "EtcdGateway", "SessionLedger", "LedgerCore",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "CustodyTesting",
            // What the test targets share: the built executables, scratch directories, a
            // manual clock, a running `custody` and child processes, an in-memory
            // SessionAuthority. Used by tests only.
            dependencies: [
                "LedgerCore", "LMDBStorage", "SessionLedger",
                // Signs the tokens of the sign-in tests (keys made by openssl).
                .product(name: "JWTKit", package: "jwt-kit"),
            ]
        ),
        .executableTarget(
            name: "CustodyServer",
            dependencies: [
                "SessionLedger", "MQTTFront", "MQTTCodec", "Broker", "CustodyModel", "CustodyConfig", "CustodyTLS",
                "CustodyOperations", "Authorization", "LedgerService", "LedgerWire", "CustodyAuthentication",
                "HTTPPublish", "Routing",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "ClusterOwnership", "EtcdGateway", "ClusterMessaging", "NATSClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // Graceful shutdown on SIGTERM/SIGINT; metrics served on --metrics.
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "CustodyAudit",
            dependencies: [
                // CustodyConfig: `routes --config` reads the routes' dead-letter directories;
                // Routing: the outbox's compact events, read as the JSON they are sent as.
                "SessionLedger", "LMDBStorage", "CustodyConfig", "Routing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Tools/Audit"
        ),
        .executableTarget(
            name: "SessionBench",
            dependencies: [
                "SessionLedger", "LMDBStorage", "MQTTCodec", "EpollTransport", "LedgerWire",
                .product(name: "NIOCore", package: "swift-nio"),
                // `http-sink`: the 204 endpoint of the routes' benchmarks.
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // `sign-token`: tokens for the sign-in benchmarks.
                .product(name: "JWTKit", package: "jwt-kit"),
                // `etcd-txn`: etcd's own rate for a claim's Txn, the cluster benchmark's yardstick.
                "EtcdGateway",
                // `nats-publish`: a nats-server's own publish rate, the cluster messages' yardstick.
                "NATSClient",
            ],
            path: "Benchmarks/SessionBench"
        ),
        .testTarget(
            name: "LedgerCoreTests",
            dependencies: ["LedgerCore", "CustodyTesting"],
            resources: [.copy("Golden")]
        ),
        .testTarget(
            name: "LMDBStorageTests",
            // CLMDB only to write foreign LMDB files that the store must refuse.
            dependencies: ["LMDBStorage", "LedgerCore", "CLMDB", "CustodyTesting"]
        ),
        .testTarget(
            name: "SessionBenchTests",
            // Runs the real `custody-bench` against a real mosquitto and a real `custody` on 127.0.0.1.
            dependencies: ["SessionBench", "CustodyServer", "CustodyTesting"]
        ),
        .testTarget(
            name: "CustodyConfigTests",
            dependencies: ["CustodyConfig", "CustodyModel", "LedgerCore", "CustodyTesting", "Authorization"]
        ),
        .testTarget(
            name: "CustodyTLSTests",
            // Real TLS handshakes over 127.0.0.1 with certificates made by the openssl command.
            dependencies: [
                "CustodyTLS", "CustodyConfig", "CustodyModel", "CustodyTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .testTarget(
            name: "CustodyOperationsTests",
            dependencies: ["CustodyOperations", "SessionLedger", "CustodyTesting"]
        ),
        .testTarget(
            name: "BrokerTests",
            dependencies: ["Broker", "MQTTCodec", "LMDBStorage", "LedgerCore", "CustodyTesting"]
        ),
        .testTarget(
            name: "MQTTFrontTests",
            // Unit tests of the connection state machine, and end-to-end tests that run the real
            // `custody` with mosquitto_pub/sub and paho-mqtt over 127.0.0.1.
            dependencies: [
                "MQTTFront", "MQTTCodec", "SessionLedger", "CustodyModel", "CustodyConfig", "CustodyServer", "Broker",
                "CustodyTesting",
            ]
        ),
        .testTarget(
            name: "EpollTransportTests",
            // The event loop, its timers and the byte streams, over socket pairs and 127.0.0.1.
            dependencies: ["EpollTransport", "CustodyTesting", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "MQTTCodecTests",
            dependencies: ["MQTTCodec", "CustodyTesting", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "SessionLedgerTests",
            // The crash test drives the real `custody-bench` binary as a child process.
            dependencies: ["SessionLedger", "LedgerCore", "LMDBStorage", "SessionBench", "CustodyTesting"]
        ),
        .testTarget(
            name: "CustodyServerTests",
            // The real `custody` as a child process (flags, configuration files, signals), and
            // what only the executable holds: its log handlers and lifecycle event publisher.
            dependencies: [
                "CustodyServer", "SessionLedger", "LMDBStorage", "CustodyTesting", "Broker", "MQTTCodec", "HTTPPublish",
                "Authorization", "LedgerCore",
            ]
        ),
        .testTarget(
            name: "LedgerServiceTests",
            // The ledger socket's protocol over a real socket to a real `custody`, and the
            // Mosquitto plugin in a real Mosquitto (2.0) driven by mosquitto_pub/sub and paho-mqtt.
            dependencies: [
                "LedgerWire", "LedgerService", "CustodyServer", "SessionLedger", "LedgerCore", "LMDBStorage", "CustodyTesting",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "CustodyAuthenticationTests",
            // Tokens signed with keys made by openssl; the webhook against a real HTTP server
            // (a Python script) on 127.0.0.1.
            dependencies: ["CustodyAuthentication", "CustodyConfig", "CustodyModel", "LedgerCore", "CustodyTesting", "Authorization"]
        ),
        .testTarget(
            name: "RoutingTests",
            // The CloudEvents format, and routes end to end: the real `custody` with routes to a
            // real HTTP receiver (a Python script) on 127.0.0.1 that fails on demand, mosquitto_pub
            // and curl as publishers, kill -9 and restart.
            dependencies: [
                "Routing", "CustodyServer", "CustodyAudit", "CustodyTesting", "Broker", "LMDBStorage", "LedgerCore", "MQTTCodec",
            ]
        ),
        .testTarget(
            name: "EtcdGatewayTests",
            // Against a real etcd (Debian's etcd-server) started by the tests on free ports.
            dependencies: ["EtcdGateway", "CustodyTesting"]
        ),
        .testTarget(
            name: "NATSClientTests",
            // Against a real nats-server (Debian's, with JetStream) started by the tests on free ports.
            dependencies: ["NATSClient", "CustodyTesting", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "ClusterMessagingTests",
            // The subject mapping's property tests (and against a real nats-server), and three real
            // `custody` nodes on real nats-server(s) and etcd with paho-mqtt clients over 127.0.0.1,
            // and `custody-bench` (cluster mode, nats-publish) against them.
            dependencies: [
                "ClusterMessaging", "NATSClient", "Broker", "MQTTCodec", "CustodyServer", "SessionBench", "CustodyTesting",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "ClusterOwnershipTests",
            // Three real `custody` nodes on a real etcd with mosquitto clients over 127.0.0.1,
            // and `custody-audit` on their ledgers merged.
            dependencies: [
                "ClusterOwnership", "EtcdGateway", "SessionLedger", "LedgerCore", "CustodyServer", "CustodyAudit", "CustodyTesting",
            ]
        ),
        .testTarget(
            name: "AuthorizationTests",
            dependencies: ["Authorization"]
        ),
        .testTarget(
            name: "CustodyAuditTests",
            // Drives the real `custody-audit` binary as a child process against real ledgers
            // (and `custody-bench ledger-archive-fixture` to build the largest of them).
            dependencies: ["CustodyAudit", "SessionBench", "SessionLedger", "LedgerCore", "LMDBStorage", "CustodyTesting"]
        ),
    ]
)
