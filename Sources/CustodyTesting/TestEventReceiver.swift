import Foundation

/// A real HTTP endpoint on 127.0.0.1 for the routes' tests: Python's http.server (HTTP/1.1,
/// keep-alive), recording every POST (headers, body, time) and answering as told.
///
/// Answers: the next line of the plan (`fail`: `STATUS` or `STATUS RETRY-AFTER-SECONDS`),
/// else the default status (`answerByDefault`, at first 204).
public final class TestEventReceiver: @unchecked Sendable {
    private let server: PythonServer
    public var port: Int { server.port }
    public var directory: String { server.directory }

    static let script = #"""
    import base64, http.server, json, os, signal, sys, threading, time

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    directory = sys.argv[1]
    lock = threading.Lock()
    log = open(os.path.join(directory, "requests.jsonl"), "a")

    def next_answer():
        plan = os.path.join(directory, "plan.txt")
        lines = []
        if os.path.exists(plan):
            with open(plan) as f:
                lines = [l.strip() for l in f if l.strip()]
        if lines:
            with open(plan + ".tmp", "w") as f:
                f.write("\n".join(lines[1:]) + ("\n" if len(lines) > 1 else ""))
            os.replace(plan + ".tmp", plan)
            return lines[0]
        default = os.path.join(directory, "default.txt")
        if os.path.exists(default):
            with open(default) as f:
                return f.read().strip() or "204"
        return "204"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                answer = next_answer().split()
                log.write(json.dumps({
                    "time": time.time(), "path": self.path, "status": int(answer[0]),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": base64.b64encode(body).decode(),
                }) + "\n")
                log.flush()
            self.send_response(int(answer[0]))
            if len(answer) > 1:
                self.send_header("Retry-After", answer[1])
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """#

    public init() throws {
        server = try PythonServer("receiver", script: Self.script, name: "the event receiver")
    }

    public var endpoint: String { "http://127.0.0.1:\(port)/events" }

    /// The next requests get these answers, in order (`"500"`, `"429 1"`).
    public func fail(_ answers: [String]) throws {
        try (answers.joined(separator: "\n") + "\n").write(toFile: directory + "/plan.txt", atomically: true, encoding: .utf8)
    }

    /// Requests past the plan get this status (and Retry-After, as `"503 2"`).
    public func answerByDefault(_ answer: String) throws {
        try answer.write(toFile: directory + "/default.txt", atomically: true, encoding: .utf8)
    }

    /// One request as it came.
    public struct Request: Sendable {
        public var time: Double
        public var status: Int
        public var headers: [String: String]
        public var body: Data

        /// The body as a JSON object (structured mode) or array (batch mode).
        public var json: Any? { try? JSONSerialization.jsonObject(with: body) }
    }

    /// Every request so far, in arrival order.
    public func requests() throws -> [Request] {
        guard let text = try? String(contentsOfFile: directory + "/requests.jsonl", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return Request(
                time: object["time"] as? Double ?? 0, status: object["status"] as? Int ?? 0,
                headers: object["headers"] as? [String: String] ?? [:],
                body: Data(base64Encoded: object["body"] as? String ?? "") ?? Data())
        }
    }

    /// Waits until `enough` holds of the requests (polling); the requests then.
    @discardableResult
    public func waitFor(timeout: Double = 20, _ enough: ([Request]) -> Bool) throws -> [Request] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let requests = try requests()
            if enough(requests) { return requests }
            guard Date() < deadline else { throw TestFailure.timeout("event receiver: \(requests.count) requests") }
            usleep(50_000)
        }
    }

    public func stop() { server.stop() }
}
