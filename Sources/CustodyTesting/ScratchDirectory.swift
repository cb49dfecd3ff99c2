import Foundation

/// A path under the temporary directory that nothing uses yet (not created): each test
/// gets its own ledger, store or output files. `label` says whose it is when one is left over.
public func scratchDirectory(_ label: String) -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("custody-\(label)-\(UUID().uuidString)").path
}

/// Runs `body` with a fresh scratch directory path, and removes whatever is there afterwards.
public func withScratchDirectory<R>(_ label: String, _ body: (String) async throws -> R) async throws -> R {
    let directory = scratchDirectory(label)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await body(directory)
}

/// The synchronous form of `withScratchDirectory`.
public func withScratchDirectory<R>(_ label: String, _ body: (String) throws -> R) throws -> R {
    let directory = scratchDirectory(label)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try body(directory)
}
