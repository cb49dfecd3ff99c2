import Foundation

/// The package root, from this file's path (Sources/CustodyTesting/BuiltProducts.swift).
public let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// A built executable of this package (`custody`, `custody-audit`, `custody-bench`): next to
/// the test binary (SwiftPM puts all products of a configuration in one directory), or in
/// `.build/debug`.
public func builtProduct(_ name: String) throws -> URL {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
        packageRoot.appendingPathComponent(".build/debug"),
    ]
    for directory in candidates {
        let url = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw TestFailure.missing("\(name) in \(candidates.map(\.path))")
}

/// The Python with paho-mqtt 2.x that `Tools/custody-setup` installs in `.venv-tests`.
public func pahoPython() throws -> String {
    let path = packageRoot.appendingPathComponent(".venv-tests/bin/python").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw TestFailure.unexpected("\(path) is missing: run Tools/custody-setup")
    }
    return path
}
