import Foundation

/// A real HTTP server on 127.0.0.1 for the authentication webhook's tests: Python's
/// http.server, answering each POST by the request's `userName`:
///
/// - `slow...`: after 3 seconds, allow;
/// - `fail...`: HTTP 500;
/// - `garbage...`: HTTP 200 with a body that is not JSON;
/// - `deny...`: `{"decision": "deny", "errorReason": "denied by the test server"}`;
/// - `short...`: allow, with an `expiration` 2 seconds ahead;
/// - anything else: allow, named by `userName` (or the ClientID), with the attribute `area`
///   set to the password (decoded) when there is one.
///
/// `GET /count` answers how many POSTs came; each POST's body is kept as `last.json`.
public final class TestWebhookServer: @unchecked Sendable {
    private let server: PythonServer
    public var port: Int { server.port }
    public var directory: String { server.directory }

    static let script = #"""
    import base64, datetime, http.server, json, os, signal, sys, time

    # Foundation's Process starts children with SIGTERM blocked.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    directory = sys.argv[1]
    count = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.answer(200, {"count": count})

        def do_POST(self):
            global count
            count += 1
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with open(os.path.join(directory, "last.json"), "wb") as f:
                f.write(body)
            with open(os.path.join(directory, "last-headers.txt"), "w") as f:
                f.write(str(self.headers))
            request = json.loads(body)
            user = request.get("userName") or ""
            if user.startswith("slow"):
                time.sleep(3)
            if user.startswith("fail"):
                return self.answer(500, "boom")
            if user.startswith("garbage"):
                return self.answer(200, "this is not { json")
            if user.startswith("deny"):
                return self.answer(200, {"decision": "deny", "errorReason": "denied by the test server"})
            answer = {"decision": "allow", "clientAuthenticationName": user or request["clientId"]}
            if request.get("password"):
                answer["attributes"] = {"area": base64.b64decode(request["password"]).decode()}
            if user.startswith("short"):
                expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
                answer["expiration"] = expiry.isoformat().replace("+00:00", "Z")
            self.answer(200, answer)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """#

    public init() throws {
        server = try PythonServer("webhook", script: Self.script, name: "the webhook test server")
    }

    public var endpoint: String { "http://127.0.0.1:\(port)/auth" }

    /// How many POSTs the server has had.
    public func count() throws -> Int {
        let (status, out, err) = try run("/usr/bin/curl", ["-s", "http://127.0.0.1:\(port)/count"], timeout: 10)
        guard status == 0, let data = out.data(using: .utf8),
            let object = try JSONSerialization.jsonObject(with: data) as? [String: Any], let count = object["count"] as? Int
        else { throw TestFailure.unexpected("count: \(out) \(err)") }
        return count
    }

    /// The body of the last POST.
    public func lastRequest() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/last.json"))
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
    }

    public func lastHeaders() throws -> String {
        try String(contentsOfFile: directory + "/last-headers.txt", encoding: .utf8)
    }

    public func stop() { server.stop() }
}
