import Authorization
import CustodyModel
import Foundation
import Yams

// The `routes:` section (issue 21): every key checked, `${env:VAR}` in headers replaced now
// (a variable that is not set is named with its line).

extension ConfigurationReader {
    func routes(_ node: Node, environment: [String: String]) throws(ConfigurationError) -> [RouteConfiguration] {
        var routes: [RouteConfiguration] = []
        var names: [String: Int] = [:]
        for (index, item) in try sequence(node, "routes").enumerated() {
            let route = try route(item, "routes[\(index)]", environment: environment)
            if let first = names[route.name] {
                throw fail(item, "routes[\(index)].name", "'\(route.name)' is already routes[\(first)]")
            }
            names[route.name] = index
            routes.append(route)
        }
        return routes
    }

    func route(_ node: Node, _ at: String, environment: [String: String]) throws(ConfigurationError) -> RouteConfiguration {
        let keys = try mapping(node, at, known: [
            "name", "topicFilters", "lifecycleEvents", "endpoint", "allowInsecure", "mode", "maxBatchEvents",
            "maxBatchWaitMilliseconds", "headers", "retry", "enrichments", "deadLetter", "limits", "timeoutSeconds",
        ])
        guard let (_, nameNode) = keys["name"] else { throw fail(node, "\(at).name", "missing") }
        let name = try string(nameNode, "\(at).name")
        guard RouteConfiguration.isValidName(name) else {
            throw fail(nameNode, "\(at).name", "'\(name)' is not 1-64 letters, digits, - or _")
        }
        guard let (_, endpointNode) = keys["endpoint"] else { throw fail(node, "\(at).endpoint", "missing (an http or https URL)") }
        let endpointText = try string(endpointNode, "\(at).endpoint")
        guard let endpoint = URL(string: endpointText), let scheme = endpoint.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = endpoint.host, !host.isEmpty
        else { throw fail(endpointNode, "\(at).endpoint", "'\(endpointText)' is not an http:// or https:// URL") }
        guard let (_, deadLetterNode) = keys["deadLetter"] else {
            throw fail(node, "\(at).deadLetter", "missing ({ directory: DIR } or { topic: TOPIC })")
        }
        var route = RouteConfiguration(name: name, endpoint: endpoint, deadLetter: try deadLetter(deadLetterNode, "\(at).deadLetter"))
        if let (_, value) = keys["allowInsecure"] { route.allowInsecure = try bool(value, "\(at).allowInsecure") }
        if scheme == "http", !route.allowInsecure, !HostPort(host: host, port: 0).isLoopback {
            throw fail(endpointNode, "\(at).endpoint", "http:// is for loopback endpoints only (https, or allowInsecure: true)")
        }
        if let (_, value) = keys["topicFilters"] {
            for (index, item) in try sequence(value, "\(at).topicFilters").enumerated() {
                let text = try string(item, "\(at).topicFilters[\(index)]")
                guard MQTTTopicFilter(text) != nil else {
                    throw fail(item, "\(at).topicFilters[\(index)]", "'\(text)' is not an MQTT topic filter")
                }
                route.topicFilters.append(text)
            }
        }
        if let (_, value) = keys["lifecycleEvents"] { route.lifecycleEvents = try bool(value, "\(at).lifecycleEvents") }
        guard !route.topicFilters.isEmpty || route.lifecycleEvents else {
            throw fail(node, "\(at).topicFilters", "the route takes nothing: give topicFilters, lifecycleEvents: true, or both")
        }
        if let (_, value) = keys["mode"] { route.mode = try choice(value, "\(at).mode", RouteConfiguration.Mode.self) }
        if let (_, value) = keys["maxBatchEvents"] {
            route.maxBatchEvents = try int(value, "\(at).maxBatchEvents", range: RouteConfiguration.maxBatchEventsRange)
        }
        if let (_, value) = keys["maxBatchWaitMilliseconds"] {
            route.maxBatchWaitMilliseconds = try int(
                value, "\(at).maxBatchWaitMilliseconds", range: RouteConfiguration.maxBatchWaitMillisecondsRange)
        }
        if let (_, value) = keys["timeoutSeconds"] {
            route.timeoutSeconds = try int(value, "\(at).timeoutSeconds", range: RouteConfiguration.timeoutSecondsRange)
        }
        if let (_, value) = keys["headers"] { route.headers = try headers(value, "\(at).headers", environment: environment) }
        if let (_, value) = keys["retry"] {
            let retry = try mapping(value, "\(at).retry", known: ["maxAttempts", "maxAgeMinutes"])
            if let (_, value) = retry["maxAttempts"] {
                route.maxAttempts = try int(value, "\(at).retry.maxAttempts", range: RouteConfiguration.maxAttemptsRange)
            }
            if let (_, value) = retry["maxAgeMinutes"] {
                route.maxAgeMinutes = try int(value, "\(at).retry.maxAgeMinutes", range: RouteConfiguration.maxAgeMinutesRange)
            }
        }
        if let (_, value) = keys["enrichments"] { try enrichments(value, "\(at).enrichments", into: &route) }
        if let (_, value) = keys["limits"] {
            let limits = try mapping(value, "\(at).limits", known: ["maxEvents", "maxBytes"])
            if let (_, value) = limits["maxEvents"] {
                route.maxOutboxEvents = try int(value, "\(at).limits.maxEvents", range: RouteConfiguration.maxOutboxEventsRange)
            }
            if let (_, value) = limits["maxBytes"] {
                let text = try string(value, "\(at).limits.maxBytes")
                guard let bytes = LedgerConfiguration.parseBytes(text), bytes >= 1 << 10 else {
                    throw fail(value, "\(at).limits.maxBytes", "'\(text)' is not a size of at least 1KiB (such as 256MiB)")
                }
                route.maxOutboxBytes = bytes
            }
        }
        return route
    }

    func deadLetter(_ node: Node, _ at: String) throws(ConfigurationError) -> RouteConfiguration.DeadLetter {
        let keys = try mapping(node, at, known: ["directory", "topic"])
        switch (keys["directory"], keys["topic"]) {
        case (let directory?, nil):
            return .directory(try path(directory.value, "\(at).directory"))
        case (nil, let topic?):
            let text = try string(topic.value, "\(at).topic")
            guard MQTTTopicFilter.isValidTopicName(text) else {
                throw fail(topic.value, "\(at).topic", "'\(text)' is not an MQTT topic name")
            }
            return .topic(text)
        default:
            throw fail(node, at, "one of directory or topic")
        }
    }

    func headers(
        _ node: Node, _ at: String, environment: [String: String]
    ) throws(ConfigurationError) -> [(name: String, value: String)] {
        guard let mapping = node.mapping else { throw fail(node, at, "expected a mapping of header names to values") }
        var headers: [(name: String, value: String)] = []
        for (key, value) in mapping {
            guard let name = key.scalar?.string, !name.isEmpty,
                name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") })
            else { throw fail(key, at, "a header name is visible ASCII without ':'") }
            let text = try string(value, "\(at).\(name)")
            switch RouteConfiguration.expandEnvironment(text, environment) {
            case .success(let expanded):
                guard !expanded.utf8.contains(where: { $0 == 10 || $0 == 13 }) else {
                    throw fail(value, "\(at).\(name)", "a header value may not hold a line break")
                }
                headers.append((name, expanded))
            case .failure(let missing):
                throw fail(value, "\(at).\(name)", missing.unterminated
                    ? "'${env:' without its closing '}'" : "the environment variable \(missing.name) is not set")
            }
        }
        return headers
    }

    func enrichments(_ node: Node, _ at: String, into route: inout RouteConfiguration) throws(ConfigurationError) {
        let keys = try mapping(node, at, known: ["static", "fromClientAttributes"])
        if let (_, value) = keys["static"] {
            guard let mapping = value.mapping else { throw fail(value, "\(at).static", "expected a mapping of names to values") }
            for (key, item) in mapping {
                let name = key.scalar?.string ?? ""
                guard RouteConfiguration.isValidAttributeName(name) else {
                    throw fail(key, "\(at).static", "'\(name)' is not a CloudEvents attribute name (a-z, 0-9, 1-20 characters)")
                }
                route.staticEnrichments.append((name, try string(item, "\(at).static.\(name)")))
            }
        }
        if let (_, value) = keys["fromClientAttributes"] {
            for (index, item) in try sequence(value, "\(at).fromClientAttributes").enumerated() {
                let name = try string(item, "\(at).fromClientAttributes[\(index)]")
                guard RouteConfiguration.isValidAttributeName(name) else {
                    throw fail(item, "\(at).fromClientAttributes[\(index)]",
                               "'\(name)' is not a CloudEvents attribute name (a-z, 0-9, 1-20 characters)")
                }
                route.enrichmentsFromClientAttributes.append(name)
            }
        }
    }
}
