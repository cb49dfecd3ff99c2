import Foundation

/// What `curlPost` got back: the status, the response headers (names in lower case), the body.
public struct CurlAnswer: Sendable, CustomStringConvertible {
    public var status: Int
    public var headers: [String: String]
    public var body: String
    public var description: String { "\(status) \(headers) \(body)" }
}

/// One POST with Debian's curl: `user` as `NAME:PASSWORD` for Basic, or `bearer` a token;
/// `headers` as `Name: value`; `options` more of curl's (`--cacert`, `--cert`, `--key`).
public func curlPost(
    _ url: String, user: String? = nil, bearer: String? = nil, headers: [String] = [], options: [String] = [], body: String
) throws -> CurlAnswer {
    var arguments = ["-s", "-i", "-X", "POST", "--max-time", "15"] + options
    if let user { arguments += ["-u", user] }
    if let bearer { arguments += ["-H", "Authorization: Bearer \(bearer)"] }
    for header in headers { arguments += ["-H", header] }
    arguments += ["--data-binary", body, url]
    let (status, out, err) = try run("/usr/bin/curl", arguments, timeout: 20)
    guard status == 0 else { throw TestFailure.unexpected("curl exited \(status): \(err)") }
    let parts = out.components(separatedBy: "\r\n\r\n")
    let head = parts[0].components(separatedBy: "\r\n")
    guard let code = head.first?.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else {
        throw TestFailure.unexpected("no status line in: \(out)")
    }
    var fields: [String: String] = [:]
    for line in head.dropFirst() {
        guard let colon = line.firstIndex(of: ":") else { continue }
        fields[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    return CurlAnswer(status: code, headers: fields, body: parts.dropFirst().joined(separator: "\r\n\r\n"))
}
