#!/usr/bin/env bash
# Sign-in cost (issue 22): CONNECT cycles per second against custody
#   - with no authentication (no configuration: every Username believed);
#   - with a JSON Web Token in the CONNECT's Authentication Data (CUSTOM-JWT), RS256 and ES256;
#   - with the authentication webhook on a loopback server (Python's http.server, always
#     "allow"), its cache off and on.
# The token rows use `custody-bench connect` (a new session name per cycle). The webhook
# caches per credentials, the ClientID among them, so its rows use `custody-bench persistent`
# (the same session names again and again), and a no-authentication persistent row is beside them.
#
#   Benchmarks/auth-bench.sh [--seconds S] [--conns N] [--proto 4|5] [--no-build]
#
# Everything started here is stopped on exit. custody runs with --log-level warning.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=5
CONNS=16
PROTO=5
BUILD=1
PERSISTENT_TOTAL=2000
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --proto) PROTO="$2"; shift 2 ;;
        --total) PERSISTENT_TOTAL="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "auth-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody-bench custody
BENCH="$BIN/custody-bench"
CUSTODY="$BIN/custody"
require_files auth-bench.sh "$BENCH" "$CUSTODY"

make_workdir auth-bench

# Keys by openssl, tokens by custody-bench sign-token (jwt-kit).
(cd "$WORK" &&
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null &&
    openssl pkey -in rsa.key -pubout -out rsa.pub &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256.key &&
    openssl pkey -in ec256.key -pubout -out ec256.pub)
"$BENCH" sign-token --key "$WORK/rsa.key" --alg RS256 --subject bench-device > "$WORK/rs256.jwt"
"$BENCH" sign-token --key "$WORK/ec256.key" --alg ES256 --subject bench-device > "$WORK/es256.jwt"

# The webhook: Python's http.server on 127.0.0.1, allowing everyone (named by the Username).
cat > "$WORK/webhook.py" <<'EOF'
import http.server, json, signal, sys
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
class Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive, and no Nagle: the headers and the body are two writes, and a delayed ACK
    # would hold the second for 40 ms.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        body = json.dumps({"decision": "allow", "clientAuthenticationName": request.get("userName") or request["clientId"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.serve_forever()
EOF
HOOK_PORT=$(free_port)
python3 "$WORK/webhook.py" "$HOOK_PORT" &
HOOK_PID=$!
PIDS+=("$HOOK_PID")

# One custody per configuration; prints its port and pid. It runs in a subshell (`< <(...)`),
# so the caller adds the pid to PIDS (written to $WORK/NAME/pid too).
start_custody() { # name yaml
    local name=$1 port
    port=$(free_port)
    mkdir -p "$WORK/$name"
    printf '%s\n' "listeners: [{ protocol: mqtt, address: \"127.0.0.1:$port\" }]" "dataDir: $WORK/$name/data" \
        "namespace: { maximumClientSessionsPerAuthenticationName: 100 }" \
        "limits: { connectsPerSecondPerSession: 0 }" "logLevel: warning" "$2" > "$WORK/$name/custody.yaml"
    "$CUSTODY" --config "$WORK/$name/custody.yaml" > "$WORK/$name/custody.log" 2>&1 &
    local pid=$!
    echo "$pid" > "$WORK/$name/pid"
    for _ in $(seq 1 150); do
        grep -qs "custody: listening mqtt" "$WORK/$name/custody.log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "custody: listening mqtt" "$WORK/$name/custody.log" || { echo "auth-bench.sh: custody $name did not start:" >&2; cat "$WORK/$name/custody.log" >&2; exit 1; }
    echo "$port $pid"
}

JWT_YAML="authentication: { jwt: [{ issuer: \"https://login.example/tenant\", audience: custody, keys: [$WORK/rsa.pub, $WORK/ec256.pub] }] }"
read -r NONE_PORT NONE_PID < <(start_custody none "")
read -r JWT_PORT JWT_PID < <(start_custody jwt "$JWT_YAML")
read -r HOOK0_PORT HOOK0_PID < <(start_custody webhook-nocache "authentication: { webhook: { endpoint: \"http://127.0.0.1:$HOOK_PORT/auth\", cacheSeconds: 0 } }")
read -r HOOK60_PORT HOOK60_PID < <(start_custody webhook-cache "authentication: { webhook: { endpoint: \"http://127.0.0.1:$HOOK_PORT/auth\", cacheSeconds: 60 } }")
PIDS+=("$NONE_PID" "$JWT_PID" "$HOOK0_PID" "$HOOK60_PID")
for name in none jwt webhook-nocache webhook-cache; do
    [ -s "$WORK/$name/pid" ] || { echo "auth-bench.sh: custody $name did not start" >&2; exit 1; }
done

echo "# auth-bench: commit $(git -C "$ROOT" rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), conns=$CONNS proto=$PROTO"
run() { # label port pid mode args...
    local label=$1 port=$2 pid=$3 mode=$4
    shift 4
    local extra=(--seconds "$SECONDS_PER_RUN")
    [ "$mode" = persistent ] && extra=(--total "$PERSISTENT_TOTAL" --seconds 60)
    local out
    out=$("$BENCH" "$mode" --port "$port" --pid "$pid" --conns "$CONNS" --proto "$PROTO" "${extra[@]}" "$@" 2>&1 | tail -2 | tr '\n' ' ')
    echo "$label | $out"
}
TOKEN_MODE=(--auth-method CUSTOM-JWT)
[ "$PROTO" = 4 ] && TOKEN_MODE=()
run "none connect" "$NONE_PORT" "$NONE_PID" connect
run "jwt-rs256 connect" "$JWT_PORT" "$JWT_PID" connect --token-file "$WORK/rs256.jwt" "${TOKEN_MODE[@]}"
run "jwt-es256 connect" "$JWT_PORT" "$JWT_PID" connect --token-file "$WORK/es256.jwt" "${TOKEN_MODE[@]}"
run "none connect (again)" "$NONE_PORT" "$NONE_PID" connect
run "none persistent" "$NONE_PORT" "$NONE_PID" persistent
run "webhook-nocache persistent" "$HOOK0_PORT" "$HOOK0_PID" persistent --password pw
run "webhook-cache60 persistent" "$HOOK60_PORT" "$HOOK60_PID" persistent --password pw
echo "webhook server cpu (utime+stime ticks): $(awk '{print $14+$15}' /proc/$HOOK_PID/stat)"
