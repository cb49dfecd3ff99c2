#!/usr/bin/env bash
# The session ledger behind Mosquitto (issue 20): `custody-bench connect` against three setups
# side by side, at 1, 16 and 64 connections:
#   mosquitto        Debian's mosquitto alone (persistence off, quiet);
#   mosquitto+plugin the same mosquitto with libcustody-mosquitto.so, custody as its ledger
#                    (listeners: [], --ledger-socket): every CONNECT waits for a durable claim;
#   custody          custody's own front on its own ledger.
# Then `custody-bench ledger-socket`: what the socket and its protocol add to a CONNECT
# (authorize round trips: no commit) beside a claim's round trip (one durable commit).
#
#   Benchmarks/mosquitto-front.sh [--seconds S] [--conns "1 16 64"] [--protos "4 5"] [--rounds N]
#                                 [--out FILE] [--no-build]
#
# Prints a Markdown table (or writes it to --out). Everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=3
CONNS="1 16 64"
PROTOS="4"
ROUNDS=1
OUT=""
BUILD=1

while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --protos) PROTOS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "mosquitto-front.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody custody-bench custody-mosquitto
BENCH="$BIN/custody-bench"
PLUGIN="$BIN/libcustody-mosquitto.so"
require_files mosquitto-front.sh "$BENCH" "$BIN/custody" "$PLUGIN"

make_workdir mqfront

CUSTODY_FLAGS=(--max-sessions-per-client 100 --connects-per-second-per-session 0 --log-level warning)

# custody as a ledger only: no MQTT listener, the socket for the plugin.
SOCKET="$WORK/ledger.sock"
cat > "$WORK/ledger.yaml" <<EOF
dataDir: $WORK/ledger
listeners: []
ledgerSocket: $SOCKET
EOF
"$BIN/custody" --config "$WORK/ledger.yaml" "${CUSTODY_FLAGS[@]}" > "$WORK/ledger.log" 2>&1 &
LEDGER_PID=$!
PIDS+=("$LEDGER_PID")
wait_line "$WORK/ledger.log" "custody: running" 30 || { echo "mosquitto-front.sh: the ledger did not start" >&2; cat "$WORK/ledger.log" >&2; exit 1; }

# mosquitto alone and mosquitto with the plugin: the same configuration but for the plugin.
# Prints "PORT PID".
start_mosquitto() { # name [plugin lines...]
    local name=$1; shift
    local port
    port=$(free_port)
    mkdir -p "$WORK/$name"
    chmod 0777 "$WORK" "$WORK/$name"
    {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence false"
        echo "log_dest file $WORK/$name/mosquitto.log"
        echo "connection_messages false"
        echo "max_keepalive 65535"
        # Run as ourselves: started as root it would drop to 'mosquitto', who cannot open the 0660 socket.
        echo "user $(id -un)"
        for line in "$@"; do echo "$line"; done
    } > "$WORK/$name/mosquitto.conf"
    /usr/sbin/mosquitto -c "$WORK/$name/mosquitto.conf" > /dev/null 2>&1 &
    local pid=$!
    wait_port "$port" 10 || { echo "mosquitto-front.sh: $name did not start" >&2; cat "$WORK/$name/mosquitto.log" >&2; kill -9 "$pid"; exit 1; }
    echo "$port $pid"
}
read -r MOSQ_PORT MOSQ_PID <<< "$(start_mosquitto mosquitto)"
PIDS+=("$MOSQ_PID")
read -r PLUGIN_PORT PLUGIN_PID <<< "$(start_mosquitto plugin "plugin $PLUGIN" "plugin_opt_socket $SOCKET")"
PIDS+=("$PLUGIN_PID")

# custody's own front, its own ledger.
CUSTODY_PORT=$(free_port)
"$BIN/custody" --listen "127.0.0.1:$CUSTODY_PORT" --data-dir "$WORK/custody" "${CUSTODY_FLAGS[@]}" > "$WORK/custody.log" 2>&1 &
CUSTODY_PID=$!
PIDS+=("$CUSTODY_PID")
wait_line "$WORK/custody.log" "custody: running" 30 || { echo "mosquitto-front.sh: custody did not start" >&2; cat "$WORK/custody.log" >&2; exit 1; }

RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
run_one() { # setup port pid proto conns round
    local json
    if json=$("$BENCH" connect --host 127.0.0.1 --port "$2" --pid "$3" --proto "$4" --conns "$5" \
        --seconds "$SECONDS_PER_RUN" --json 2> "$WORK/bench.err"); then
        printf '{"setup":"%s","proto":%s,"conns":%s,"round":%s,"report":%s}\n' "$1" "$4" "$5" "$6" "$json" >> "$RESULTS"
    else
        echo "mosquitto-front.sh: $1 proto=$4 conns=$5 failed: $(cat "$WORK/bench.err")" >&2
    fi
    echo "mosquitto-front.sh: $1 proto=$4 conns=$5 round $6 done" >&2
}

# Warm each setup (code paged in, the ledgers' first pages).
for port in "$MOSQ_PORT" "$PLUGIN_PORT" "$CUSTODY_PORT"; do
    "$BENCH" connect --host 127.0.0.1 --port "$port" --conns 16 --seconds 1 --proto 4 > /dev/null 2>&1 || true
done

SETUPS=("mosquitto $MOSQ_PORT $MOSQ_PID" "mosquitto+plugin $PLUGIN_PORT $PLUGIN_PID" "custody $CUSTODY_PORT $CUSTODY_PID")
ORDER=0
for round in $(seq 1 "$ROUNDS"); do
    for proto in $PROTOS; do
        for conns in $CONNS; do
            # Rotate which setup goes first, so that none always runs on the warmest machine.
            for i in 0 1 2; do
                read -r name port pid <<< "${SETUPS[$(((i + ORDER) % 3))]}"
                run_one "$name" "$port" "$pid" "$proto" "$conns" "$round"
            done
            ORDER=$((ORDER + 1))
        done
    done
done

SOCKET_LINE=$("$BENCH" ledger-socket --socket "$SOCKET" --authorizations 20000 --claims 500 2>&1 | tail -1)
# The plugin's own round trip: Benchmarks/ledger-ping (the plugin's link code, compiled in),
# back to back and with 200 µs between requests (both sides asleep in between, as between
# CONNECTs), without spinning (the default) and with plugin_opt_spin_us 50. Skipped without cc.
PING_LINES=""
if command -v cc > /dev/null && cc -O2 -o "$WORK/ledger-ping" "$ROOT/Benchmarks/ledger-ping/ledger-ping.c" \
    "$ROOT/Sources/CustodyMosquittoPlugin/ledger_link.c" -I "$ROOT/Sources/CustodyMosquittoPlugin/include" 2> "$WORK/ping.err"; then
    for setting in "0 0" "0 50" "200 0" "200 50"; do
        read -r gap spin <<< "$setting"
        PING_LINES+="spin_us=$spin $("$WORK/ledger-ping" "$SOCKET" 20000 "$gap" 200 "$spin" 2>&1 | tail -1)"$'\n'
    done
else
    echo "mosquitto-front.sh: ledger-ping not built: $(cat "$WORK/ping.err" 2>/dev/null)" >&2
fi
PLUGIN_CLAIMS=$(kill -TERM "$PLUGIN_PID" 2>/dev/null; sleep 0.5; grep -o "custody: claims=.*" "$WORK/plugin/mosquitto.log" | tail -1 || true)

table() {
    python3 - "$RESULTS" "$SOCKET_LINE" "$SECONDS_PER_RUN" "$(nproc)" "$(/usr/sbin/mosquitto -h 2>&1 | head -1)" "$PLUGIN_CLAIMS" "$PING_LINES" <<'PY'
import json, statistics, sys
path, socket_line, seconds, cores, mosq_version, plugin_claims, ping_lines = sys.argv[1:8]
runs = {}
by_round = {}
for line in open(path):
    r = json.loads(line)
    runs.setdefault((r["setup"], r["proto"], r["conns"]), []).append(r["report"])
    by_round[(r["setup"], r["proto"], r["conns"], r["round"])] = r["report"]

def ceiling_ratio(proto, conns):
    # The plugin's rate over custody's own single-connection rate of the same round, then the
    # median over the rounds: the machine's load drifts between rounds more than within one.
    ratios = []
    for (setup, p, c, rnd), report in by_round.items():
        if setup != "mosquitto+plugin" or p != proto or c != conns:
            continue
        ceiling = by_round.get(("custody", proto, 1, rnd))
        if ceiling and ceiling.get("rate"):
            ratios.append(report.get("rate", 0) / ceiling["rate"])
    return statistics.median(ratios) if ratios else None

def median(reports, key):
    values = [r[key] for r in reports if key in r]
    return statistics.median(values) if values else None

def generator(reports):
    shares = [r["detail"]["bench_cpu_us_per_cycle"] * r["rate"] / 1e6 * 100
              for r in reports if "bench_cpu_us_per_cycle" in r.get("detail", {}) and "rate" in r]
    return statistics.median(shares) if shares else None

def errors(reports):
    total = {}
    for r in reports:
        for k, v in r.get("errors_by_reason", {}).items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "0"

print(f"Machine: {cores} cores; generator, brokers and ledger share them. {mosq_version}. "
      f"{seconds} s per run; medians of the rounds. Latency = TCP connect start to CONNACK. "
      "Broker CPU is the process under load's (mosquitto+plugin: mosquitto's, not the ledger's). "
      "Generator CPU: custody-bench's own share of one core.")
print()
print("| proto | conns | setup | cycles/s | p50 µs | p99 µs | broker CPU µs/cycle | generator CPU | errors | plugin / custody at 1 conn (same round, median) |")
print("|---|---:|---|---:|---:|---:|---:|---:|---|---:|")
order = {"mosquitto": 0, "mosquitto+plugin": 1, "custody": 2}
keys = sorted(runs, key=lambda k: (k[1], k[2], order.get(k[0], 9)))
for setup, proto, conns in keys:
    reports = runs[(setup, proto, conns)]
    rate = median(reports, "rate")
    ratio_value = ceiling_ratio(proto, conns) if setup == "mosquitto+plugin" else None
    ratio = "" if ratio_value is None else f"{ratio_value:.2f}"
    f0 = lambda v: "–" if v is None else f"{v:,.0f}"
    f1 = lambda v: "–" if v is None else f"{v:.1f}"
    share = generator(reports)
    print(f"| {proto} | {conns} | {setup} | {f0(rate)} | {f0(median(reports, 'p50'))} | {f0(median(reports, 'p99'))} "
          f"| {f1(median(reports, 'cpu_us_per_cycle'))} | {'–' if share is None else f'{share:.0f}%'} | {errors(reports)} | {ratio} |")
print()
print("Ledger socket, one peer, one request at a time (`custody-bench ledger-socket`, 20,000 authorize and 500 claim round trips):")
print()
print("    " + socket_line)
if ping_lines.strip():
    print()
    print("The plugin's own round trip (`Benchmarks/ledger-ping`: the plugin's link code; 20,000 authorize, "
          "then 200 claim+release; gap_us between requests; cpu is ledger-ping's own, per authorize):")
    print()
    for line in ping_lines.strip().split("\n"):
        print("    " + line)
if plugin_claims:
    print()
    print("How long the plugin's claims held Mosquitto's thread, over the whole run (its log at exit):")
    print()
    print("    " + plugin_claims)
PY
}

if [ -n "$OUT" ]; then
    table > "$OUT"
    echo "mosquitto-front.sh: table written to $OUT" >&2
else
    table
fi
