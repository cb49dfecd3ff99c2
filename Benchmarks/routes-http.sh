#!/usr/bin/env bash
# Routes and HTTP publish (issue 21). Two measures, each beside its MQTT counterpart:
#
# 1. Routed events per second: `custody-bench publish` (QoS 1, fan-in, --conns publishers)
#    against custody without routes (`none`; and `durable`: the subscriber persistent, so
#    that every PUBACK waits for a commit, as with a route), then with one route (structured,
#    then batch of 100)
#    to `custody-bench http-sink` (answers 204 at once, keep-alive). Routed/s = events
#    delivered to the sink / time from the first publish until the outbox is empty.
# 2. HTTP publish requests per second with keep-alive (Debian's curl: `--parallel
#    --parallel-max CONNS` over one URL list, connections reused; QoS 1, Basic) against
#    `custody-bench publish` QoS 1 with as many publishers.
#
#   Benchmarks/routes-http.sh [--seconds S] [--conns N] [--rounds N] [--requests N] [--out FILE] [--no-build]
#                             [--modes "none durable structured batch"] [--no-http]
#                             [--batch-events N] [--batch-wait MS]
#
# Defaults: 5 s a run, 16 connections, 3 rounds, 50000 HTTP requests, every mode, then HTTP
# publish (--no-http: not); the batch route's maxBatchEvents 100 and maxBatchWaitMilliseconds
# its default (5) unless given. Prints a Markdown
# table (or writes it to --out) with the generators' CPU share beside every figure. Everything
# started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=5
CONNS=16
ROUNDS=3
REQUESTS=50000
OUT=""
BUILD=1
MODES="none durable structured batch"
HTTP=1
BATCH_EVENTS=100
BATCH_WAIT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --requests) REQUESTS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --modes) MODES="$2"; shift 2 ;;
        --no-http) HTTP=0; shift ;;
        --batch-events) BATCH_EVENTS="$2"; shift 2 ;;
        --batch-wait) BATCH_WAIT="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "routes-http.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody-bench custody
BENCH="$BIN/custody-bench"
require_files routes-http.sh "$BENCH" "$BIN/custody" /usr/bin/curl

make_workdir routes-http
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

# CPU seconds (user + system) of a process so far.
cpu_of() { # pid
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

SINK_PORT=$(free_port)
"$BENCH" http-sink --port "$SINK_PORT" > "$WORK/sink.out" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
wait_port "$SINK_PORT" 10 || { echo "routes-http.sh: http-sink did not start" >&2; exit 1; }

start_custody() { # name config-or-empty extra...
    local name=$1 config=$2
    shift 2
    PORT=$(free_port)
    METRICS=$(free_port)
    local args=(--listen "127.0.0.1:$PORT" --data-dir "$WORK/$name" --log-level warning --connects-per-second-per-session 0
                --metrics "127.0.0.1:$METRICS")
    [ -n "$config" ] && args+=(--config "$config")
    "$BIN/custody" "${args[@]}" "$@" > "$WORK/$name.log" 2>&1 &
    CUSTODY_PID=$!
    PIDS+=("$CUSTODY_PID")
    wait_line "$WORK/$name.log" "custody: running" 15 || { echo "routes-http.sh: custody ($name) did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
}

metric() { # name
    curl -s "http://127.0.0.1:$METRICS/metrics" | awk -v m="$1" '$1 ~ "^"m"[{ ]" || $1 == m { v = $2 } END { print v + 0 }'
}

routes_config() { # mode file
    cat > "$2" <<EOF
routes:
  - name: bench
    topicFilters: ["bench/#"]
    endpoint: http://127.0.0.1:$SINK_PORT/events
    mode: $1
    maxBatchEvents: $BATCH_EVENTS${BATCH_WAIT:+
    maxBatchWaitMilliseconds: $BATCH_WAIT}
    limits: { maxEvents: 10000000, maxBytes: 16GiB }
    deadLetter: { directory: $WORK/dead }
EOF
}

routed_run() { # mode round
    local mode=$1 round=$2 name="routes-$1-$2" config="" load json started drained sink_before sink_after delivered requests custody_before custody_after
    local extra=()
    case "$mode" in
        none) ;;
        durable) extra=(--persistent-subscribers) ;;
        *) config="$WORK/$name.yaml"; routes_config "$mode" "$config" ;;
    esac
    start_custody "$name" "$config"
    load=$(cut -d' ' -f1 /proc/loadavg)
    sink_before=$(cpu_of "$SINK_PID")
    custody_before=$(cpu_of "$CUSTODY_PID")
    started=$(date +%s.%N)
    json=$("$BENCH" publish --port "$PORT" --pid "$CUSTODY_PID" --qos 1 --shape fan-in --conns "$CONNS" \
        --seconds "$SECONDS_PER_RUN" --prefix "rb$round$mode" ${extra[@]+"${extra[@]}"} --json 2> "$WORK/bench.err") || { cat "$WORK/bench.err" >&2; exit 1; }
    delivered=0
    requests=0
    drained=$started
    if [ "$mode" = structured ] || [ "$mode" = batch ]; then
        # Until the outbox is empty (at most 10 minutes).
        for _ in $(seq 1 6000); do
            [ "$(metric custody_route_outbox_events)" = 0 ] && break
            sleep 0.1
        done
        drained=$(date +%s.%N)
        delivered=$(metric custody_route_delivered_total)
        requests=$(metric custody_route_requests_total)
    fi
    sink_after=$(cpu_of "$SINK_PID")
    custody_after=$(cpu_of "$CUSTODY_PID")
    printf '{"kind":"routed","mode":"%s","round":%s,"load":%s,"started":%s,"drained":%s,"delivered":%s,"requests":%s,"custody_cpu":%s,"sink_cpu":%s,"report":%s}\n' \
        "$mode" "$round" "$load" "$started" "$drained" "$delivered" "$requests" \
        "$(awk -v a="$custody_after" -v b="$custody_before" 'BEGIN { print a - b }')" "$(awk -v a="$sink_after" -v b="$sink_before" 'BEGIN { print a - b }')" "$json" >> "$RESULTS"
    kill "$CUSTODY_PID"; wait "$CUSTODY_PID" 2>/dev/null || true
    echo "routes-http.sh: routed $mode round $round done" >&2
}

http_run() { # round
    local round=$1 name="http-$1" load http_port out ab_cpu json
    http_port=$(free_port)
    start_custody "$name" "" --listen-http "127.0.0.1:$http_port"
    wait_line "$WORK/$name.log" "custody: listening http" 15
    printf '{"t":21.5}' > "$WORK/body.json"
    load=$(cut -d' ' -f1 /proc/loadavg)
    for _ in $(seq 1 "$REQUESTS"); do echo "url = \"http://127.0.0.1:$http_port/mqtt/messages?topic=bench/http/1\""; done > "$WORK/urls.cfg"
    /usr/bin/time -f "TIME %U %S %e" -o "$WORK/curl.time" /usr/bin/curl -s --parallel --parallel-max "$CONNS" -K "$WORK/urls.cfg" \
        -X POST --data-binary @"$WORK/body.json" -H "mqtt-qos: 1" -H "content-type: application/json" -u bench:pw \
        -o /dev/null -w "%{http_code}\n" > "$WORK/codes.txt" 2> /dev/null || true
    out=$(cat "$WORK/curl.time")
    ab_cpu=$(echo "$out" | awk '/^TIME/ { if ($4 > 0) print ($2 + $3) / $4 * 100; else print 0 }')
    rps=$(echo "$out" | awk -v n="$REQUESTS" '/^TIME/ { if ($4 > 0) print n / $4; else print 0 }')
    non2xx=$(grep -vc '^204$' "$WORK/codes.txt" || true)
    failed=$((REQUESTS - $(wc -l < "$WORK/codes.txt")))
    json=$("$BENCH" publish --port "$PORT" --pid "$CUSTODY_PID" --qos 1 --shape fan-in --conns "$CONNS" \
        --seconds "$SECONDS_PER_RUN" --prefix hb --json 2> "$WORK/bench.err") || { cat "$WORK/bench.err" >&2; exit 1; }
    printf '{"kind":"http","round":%s,"load":%s,"rps":%s,"non2xx":%s,"failed":%s,"ab_cpu":%s,"report":%s}\n' \
        "$round" "$load" "${rps:-0}" "${non2xx:-0}" "${failed:-0}" "${ab_cpu:-0}" "$json" >> "$RESULTS"
    kill "$CUSTODY_PID"; wait "$CUSTODY_PID" 2>/dev/null || true
    echo "routes-http.sh: http round $round done" >&2
}

for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        case "$mode" in
            none|durable|structured|batch) routed_run "$mode" "$round" ;;
            *) echo "routes-http.sh: unknown mode $mode (none, durable, structured, batch)" >&2; exit 2 ;;
        esac
    done
    if [ "$HTTP" = 1 ]; then http_run "$round"; fi
done

table() {
    python3 - "$RESULTS" "$SECONDS_PER_RUN" "$CONNS" "$REQUESTS" "$(nproc)" <<'PY'
import json, statistics, sys
path, seconds, conns, requests, cores = sys.argv[1:6]
rows = [json.loads(line) for line in open(path)]
def med(v): return statistics.median(v) if v else float("nan")
def cell(v, digits=0):
    return f"{med(v):,.{digits}f} ({min(v):,.{digits}f}–{max(v):,.{digits}f})" if v else "–"
loads = [r["load"] for r in rows]
print(f"Machine: {cores} cores shared by custody, the generators and the sink (and other work: load average "
      f"{min(loads):.1f}–{max(loads):.1f} at the start of the runs). {seconds} s of QoS 1 publishing a run, "
      f"{conns} publishers (fan-in, 1 subscriber), 64-byte payloads; median (min–max) of the rounds.")
print()
print("| route | MQTT QoS 1 published/s | routed events/s | routed / published (none) | routed / published (durable) | events per request | custody CPU µs per message | custody-bench CPU | sink CPU |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
base = med([r["report"]["detail"]["publish_rate"] for r in rows if r["kind"] == "routed" and r["mode"] == "none"])
durable = med([r["report"]["detail"]["publish_rate"] for r in rows if r["kind"] == "routed" and r["mode"] == "durable"])
for mode in ["none", "durable", "structured", "batch"]:
    rs = [r for r in rows if r["kind"] == "routed" and r["mode"] == mode]
    published = [r["report"]["detail"]["publish_rate"] for r in rs]
    routed = [r["delivered"] / (r["drained"] - r["started"]) for r in rs if r["delivered"] > 0 and r["drained"] > r["started"]]
    sink = [r["sink_cpu"] / (r["drained"] - r["started"]) * 100 for r in rs if r["delivered"] > 0 and r["drained"] > r["started"]]
    ratio = f"{med(routed) / base:.2f}" if routed and base == base else "–"
    ratio_durable = f"{med(routed) / durable:.2f}" if routed and durable == durable else "–"
    per_request = [r["delivered"] / r["requests"] for r in rs if r.get("requests", 0) > 0]
    # custody's CPU from the first publish until the outbox was empty, per message published.
    per_message = [r["custody_cpu"] * 1e6 / r["report"]["published"] for r in rs
                   if r.get("custody_cpu") and r["report"].get("published")]
    print(f"| {mode} | {cell(published)} | {cell(routed)} | {ratio} | {ratio_durable} | {cell(per_request, 1)} | {cell(per_message, 1)} | {cell([r['report']['bench_cpu_pct'] for r in rs])}% "
          f"| {cell(sink) + '%' if sink else '–'} |")
print()
hs = [r for r in rows if r["kind"] == "http"]
print(f"HTTP publish: `curl --parallel --parallel-max {conns}` over {requests} POSTs, connections kept (QoS 1, Basic, "
      f"10-byte JSON body) against custody-bench publish "
      f"QoS 1 with {conns} publishers on the same custody.")
print()
print("| publisher | messages/s | generator CPU | non-204 / no answer |")
print("|---|---:|---:|---:|")
print(f"| HTTP POST, keep-alive | {cell([r['rps'] for r in hs])} | {cell([r['ab_cpu'] for r in hs])}% "
      f"| {sum(r['non2xx'] for r in hs)} / {sum(r['failed'] for r in hs)} |")
print(f"| MQTT QoS 1 | {cell([r['report']['detail']['publish_rate'] for r in hs])} "
      f"| {cell([r['report']['bench_cpu_pct'] for r in hs])}% | – |")
PY
}

if [ -n "$OUT" ]; then
    table > "$OUT"
    echo "routes-http.sh: table written to $OUT" >&2
else
    table
fi
