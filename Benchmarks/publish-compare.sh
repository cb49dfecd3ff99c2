#!/usr/bin/env bash
# What authorization costs a message: `custody-bench publish` (QoS 0 and 1, fan-in and
# fan-out) against custody with authorization open (no configuration file) and against
# custody enforcing a configuration of 10 client groups, 10 topic spaces and 20 permission
# bindings, where the benchmark clients' Publisher template is the 50th they hold (49 that
# do not match come first, most with ${client.authenticationName}). Optionally Debian's
# mosquitto beside them. Rounds alternate the brokers' order. Prints a Markdown table (or
# writes it to --out) with the generator's CPU share beside every figure.
#
#   Benchmarks/publish-compare.sh [--seconds S] [--rounds N] [--conns N] [--proto 4|5]
#                                 [--qos "0 1"] [--shapes "fan-in fan-out"] [--rate R]
#                                 [--brokers "open enforced mosquitto"] [--out FILE]
#                                 [--raw FILE] [--no-build]
#
# Defaults: 5 s a run, 3 rounds, 16 connections (fan-in: 16 publishers, fan-out: 16
# subscribers), MQTT 5.0, brokers "open enforced". --rate caps the messages published per
# second (0: as fast as flow control allows). --raw keeps every run's JSON. Everything
# started here is stopped on exit. mosquitto 2.0.11 leaves some QoS 1 messages undelivered at
# fan-in (its lost column; Benchmarks/RESULTS.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=5
ROUNDS=3
CONNS=16
PROTO=5
QOS_LEVELS="0 1"
SHAPES="fan-in fan-out"
RATE=0
BROKERS="open enforced"
OUT=""
RAW=""
BUILD=1

while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --proto) PROTO="$2"; shift 2 ;;
        --qos) QOS_LEVELS="$2"; shift 2 ;;
        --shapes) SHAPES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --brokers) BROKERS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --raw) RAW="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "publish-compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody-bench custody
BENCH="$BIN/custody-bench"
require_files publish-compare.sh "$BENCH" "$BIN/custody"

make_workdir publish-compare

# The benchmark connects as pbu0..pbu7 (--prefix pb: 8 user names for up to 70 connections)
# and publishes to bench/pb/USER; its subscribers take bench/pb/+.
PREFIX=pb
cat > "$WORK/authorization.yaml" <<'EOF'
authorization: enforced
clientGroups:
  - { name: operators,      query: "authenticationName IN ['ops-1', 'ops-2', 'ops-3']" }
  - { name: area1-machines, query: "attributes.area = 'area1' and attributes.role IN ['machine', 'gateway']" }
  - { name: area2-machines, query: "attributes.area = 'area2'" }
  - { name: gateways,       query: "attributes.role = 'gateway' or authenticationName IN ['gw-1', 'gw-2']" }
  - { name: floor-high,     query: "attributes.floor >= 3" }
  - { name: dashboards,     query: "authenticationName IN ['dash-1', 'dash-2'] or attributes.role = 'dashboard'" }
  - { name: bench-a,        query: "authenticationName IN ['pbu0', 'pbu1', 'pbu2', 'pbu3']" }
  - { name: bench-b,        query: "authenticationName IN ['pbu4', 'pbu5', 'pbu6', 'pbu7']" }
  - { name: bench-all,      query: "authenticationName IN ['pbu0', 'pbu1', 'pbu2', 'pbu3', 'pbu4', 'pbu5', 'pbu6', 'pbu7'] or attributes.role = 'bench'" }
  - { name: auditors,       query: "attributes.role = 'auditor'" }
topicSpaces:
  - name: telemetry
    topicTemplates: ["devices/${client.authenticationName}/telemetry", "devices/${client.authenticationName}/telemetry/#",
                     "devices/${client.authenticationName}/events/+", "telemetry/${client.authenticationName}/+/raw",
                     "telemetry/+/${client.authenticationName}/summary", "devices/+/shadow/${client.authenticationName}",
                     "sensors/${client.authenticationName}/temperature", "sensors/${client.authenticationName}/humidity",
                     "sensors/${client.authenticationName}/+/calibration", "metrics/${client.authenticationName}/#"]
  - name: commands
    topicTemplates: ["devices/${client.authenticationName}/commands/#", "commands/+/${client.authenticationName}",
                     "commands/${client.authenticationName}/reply/+", "jobs/${client.authenticationName}/pending",
                     "jobs/${client.authenticationName}/+/accepted", "jobs/${client.authenticationName}/+/rejected",
                     "ota/${client.authenticationName}/firmware/+", "ota/${client.authenticationName}/status",
                     "rpc/${client.authenticationName}/request/+", "rpc/+/response/${client.authenticationName}"]
  - name: area-status
    topicTemplates: ["areas/${client.attributes.area}/status", "areas/${client.attributes.area}/machines/${client.authenticationName}/#",
                     "areas/${client.attributes.area}/alarms/+"]
  - name: fleet
    topicTemplates: ["fleet/+/status", "fleet/+/alerts/#", "fleet/${client.authenticationName}/config",
                     "fleet/${client.authenticationName}/location", "fleet/region/+/${client.authenticationName}",
                     "fleet/${client.authenticationName}/battery", "fleet/${client.authenticationName}/diagnostics/+",
                     "fleet/maintenance/${client.authenticationName}", "fleet/+/+/odometer", "fleet/${client.authenticationName}/trip/#"]
  - name: dashboards
    topicTemplates: ["dashboards/#", "reports/+/daily", "reports/+/weekly"]
  - name: audit
    topicTemplates: ["audit/#", "security/+/events"]
  - name: misc
    topicTemplates: ["system/+/heartbeat", "system/${client.authenticationName}/version", "system/${client.authenticationName}/uptime",
                     "logs/${client.authenticationName}/+", "logs/+/${client.authenticationName}/error",
                     "time/sync/${client.authenticationName}", "presence/${client.authenticationName}",
                     "presence/+/${client.authenticationName}/online", "config/${client.authenticationName}/+",
                     "config/global/${client.authenticationName}"]
  - name: bench-decoys
    topicTemplates: ["bench/${client.authenticationName}/+/in", "bench/+/${client.authenticationName}/out",
                     "bench/+/+/${client.authenticationName}", "bench/control/${client.authenticationName}",
                     "bench/${client.authenticationName}/status", "bench/+/${client.authenticationName}/+",
                     "bench/results/${client.authenticationName}/+", "bench/+/in/${client.authenticationName}",
                     "bench/${client.authenticationName}/#", "bench/control/+/stop"]
  - name: bench-publish
    topicTemplates: ["bench/+/${client.authenticationName}/telemetry", "bench/+/${client.authenticationName}/events",
                     "bench/${client.authenticationName}/+", "bench/+/control/${client.authenticationName}",
                     "bench/+/${client.authenticationName}/commands/#", "bench/admin/+/${client.authenticationName}",
                     "bench/+/state/${client.authenticationName}", "bench/+/${client.authenticationName}-shadow",
                     "bench/+/x${client.authenticationName}", "bench/+/${client.authenticationName}"]
  - name: bench-subscribe
    topicTemplates: ["bench/${client.authenticationName}/#", "bench/control/+", "bench/+/control/#", "bench/+/+"]
permissionBindings:
  - { name: ops-pub,            clientGroupName: operators,      topicSpaceName: commands,        permission: Publisher }
  - { name: ops-sub,            clientGroupName: operators,      topicSpaceName: telemetry,       permission: Subscriber }
  - { name: a1-pub,             clientGroupName: area1-machines, topicSpaceName: area-status,     permission: Publisher }
  - { name: a1-sub,             clientGroupName: area1-machines, topicSpaceName: commands,        permission: Subscriber }
  - { name: a2-pub,             clientGroupName: area2-machines, topicSpaceName: area-status,     permission: Publisher }
  - { name: gw-pub,             clientGroupName: gateways,       topicSpaceName: fleet,           permission: Publisher }
  - { name: gw-sub,             clientGroupName: gateways,       topicSpaceName: commands,        permission: Subscriber }
  - { name: all-pub-telemetry,  clientGroupName: $all,           topicSpaceName: telemetry,       permission: Publisher }
  - { name: all-sub-commands,   clientGroupName: $all,           topicSpaceName: commands,        permission: Subscriber }
  - { name: floor-pub,          clientGroupName: floor-high,     topicSpaceName: fleet,           permission: Publisher }
  - { name: dash-sub,           clientGroupName: dashboards,     topicSpaceName: dashboards,      permission: Subscriber }
  - { name: audit-sub,          clientGroupName: auditors,       topicSpaceName: audit,           permission: Subscriber }
  - { name: bench-a-fleet,      clientGroupName: bench-a,        topicSpaceName: fleet,           permission: Publisher }
  - { name: bench-b-misc,       clientGroupName: bench-b,        topicSpaceName: misc,            permission: Publisher }
  - { name: bench-commands,     clientGroupName: bench-all,      topicSpaceName: commands,        permission: Publisher }
  - { name: bench-decoys-pub,   clientGroupName: bench-all,      topicSpaceName: bench-decoys,    permission: Publisher }
  - { name: bench-decoys-sub,   clientGroupName: bench-all,      topicSpaceName: bench-decoys,    permission: Subscriber }
  - { name: all-misc-sub,       clientGroupName: $all,           topicSpaceName: misc,            permission: Subscriber }
  - { name: bench-pub,          clientGroupName: bench-all,      topicSpaceName: bench-publish,   permission: Publisher }
  - { name: bench-sub,          clientGroupName: bench-all,      topicSpaceName: bench-subscribe, permission: Subscriber }
EOF
# The file must decide as intended: the 50th Publisher grant, and the subscription.
"$BIN/custody" --check-config "$WORK/authorization.yaml" --client pbu3 --publish bench/pb/pbu3 | grep -q "binding 'bench-pub'"
"$BIN/custody" --check-config "$WORK/authorization.yaml" --client pbu6 --subscribe bench/pb/+ > /dev/null

declare -A PORT PID
start_custody() { # name extra-arguments...
    local name=$1; shift
    local port
    port=$(free_port)
    "$BIN/custody" --listen "127.0.0.1:$port" --data-dir "$WORK/$name" --log-level warning --connects-per-second-per-session 0 "$@" \
        > "$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    PORT[$name]=$port
    for _ in $(seq 1 150); do
        grep -qs "custody: running" "$WORK/$name.log" && break
        kill -0 "${PID[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    grep -q "custody: running" "$WORK/$name.log" || { echo "publish-compare.sh: custody ($name) did not start:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
}

for broker in $BROKERS; do
    case "$broker" in
        open) start_custody open ;;
        enforced)
            start_custody enforced --config "$WORK/authorization.yaml"
            grep -q "authorization: enforced" "$WORK/enforced.log" || { echo "publish-compare.sh: custody did not enforce:" >&2; cat "$WORK/enforced.log" >&2; exit 1; }
            ;;
        mosquitto)
            PORT[mosquitto]=$(free_port)
            mkdir -p "$WORK/mosquitto"
            chmod 0777 "$WORK" "$WORK/mosquitto"
            cat > "$WORK/mosquitto/mosquitto.conf" <<EOF
listener ${PORT[mosquitto]} 127.0.0.1
allow_anonymous true
persistence true
persistence_location $WORK/mosquitto/
log_dest file $WORK/mosquitto/mosquitto.log
connection_messages false
EOF
            /usr/sbin/mosquitto -c "$WORK/mosquitto/mosquitto.conf" &
            PID[mosquitto]=$!
            PIDS+=("${PID[mosquitto]}")
            wait_port "${PORT[mosquitto]}" 10 || { echo "publish-compare.sh: mosquitto did not start" >&2; exit 1; }
            ;;
        *) echo "publish-compare.sh: unknown broker $broker (open, enforced, mosquitto)" >&2; exit 2 ;;
    esac
done

RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

run_one() { # broker qos shape round
    local broker=$1 qos=$2 shape=$3 round=$4 json load
    load=$(cut -d' ' -f1 /proc/loadavg)
    if json=$("$BENCH" publish --port "${PORT[$broker]}" --pid "${PID[$broker]}" --proto "$PROTO" --qos "$qos" \
        --shape "$shape" --conns "$CONNS" --seconds "$SECONDS_PER_RUN" --rate "$RATE" --prefix "$PREFIX" --json \
        2> "$WORK/bench.err"); then
        printf '{"broker":"%s","qos":%s,"shape":"%s","round":%s,"load":%s,"report":%s}\n' \
            "$broker" "$qos" "$shape" "$round" "$load" "$json" >> "$RESULTS"
    else
        echo "publish-compare.sh: $broker qos=$qos $shape round $round failed: $(cat "$WORK/bench.err")" >&2
    fi
    echo "publish-compare.sh: $broker qos=$qos $shape round $round done" >&2
}

# One short run per broker first: code paged in, allocator warm, the first sessions claimed.
for broker in $BROKERS; do
    "$BENCH" publish --port "${PORT[$broker]}" --proto "$PROTO" --qos 1 --conns 4 --seconds 1 --prefix "$PREFIX" > /dev/null 2>&1 || true
done

for qos in $QOS_LEVELS; do
    for shape in $SHAPES; do
        for round in $(seq 1 "$ROUNDS"); do
            order="$BROKERS"
            [ $((round % 2)) = 1 ] || order=$(echo "$BROKERS" | tr ' ' '\n' | tac | tr '\n' ' ')
            for broker in $order; do
                run_one "$broker" "$qos" "$shape" "$round"
                sleep 0.5
            done
        done
    done
done

[ -z "$RAW" ] || cp "$RESULTS" "$RAW"

table() {
    python3 - "$RESULTS" "$SECONDS_PER_RUN" "$ROUNDS" "$CONNS" "$PROTO" "$RATE" "$(nproc)" "$BROKERS" <<'PY'
import json, statistics, sys
path, seconds, rounds, conns, proto, rate, cores, brokers = sys.argv[1:9]
brokers = brokers.split()
runs = {}
for line in open(path):
    r = json.loads(line)
    r["report"]["load"] = r["load"]
    runs.setdefault((r["qos"], r["shape"], r["broker"]), []).append(r["report"])
loads = [rep["load"] for reps in runs.values() for rep in reps]

def med(values):
    return statistics.median(values) if values else float("nan")

def spread(values):
    # Run-to-run spread: (max - min) / median.
    m = med(values)
    return (max(values) - min(values)) / m * 100 if values and m else float("nan")

def fmt(v, digits=0):
    return "–" if v != v else f"{v:,.{digits}f}"

print(f"Machine: {cores} cores, generator and broker share it. {seconds} s per run, {rounds} rounds "
      f"(order alternating), MQTT {'5.0' if proto == '5' else '3.1.1'}, --conns {conns} (fan-in: {conns} publishers "
      f"→ 1 subscriber; fan-out: 1 publisher → {conns} subscribers), 64-byte payloads"
      + (f", --rate {rate}/s" if float(rate) > 0 else ", as fast as flow control allows") + ". "
      "rate = messages delivered to subscribers per second; CPU = broker CPU µs per delivered message; "
      "generator = custody-bench's CPU as a share of one core. Each cell: median (min–max) of the rounds. "
      f"Load average (1 min) at the start of the runs: {min(loads):.2f}–{max(loads):.2f}.")
print()
print("| QoS | shape | broker | delivered/s | spread | broker CPU µs/msg | spread | generator CPU | p99 µs | lost | errors |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
keys = sorted({(q, s) for (q, s, _) in runs}, key=lambda k: (k[0], k[1]))
for qos, shape in keys:
    for broker in brokers:
        reps = runs.get((qos, shape, broker), [])
        if not reps:
            continue
        rates = [r["rate"] for r in reps]
        cpus = [r["cpu_us_per_msg"] for r in reps if "cpu_us_per_msg" in r]
        gens = [r["bench_cpu_pct"] for r in reps]
        print(f"| {qos} | {shape} | {broker} | {fmt(med(rates))} ({fmt(min(rates))}–{fmt(max(rates))}) "
              f"| {fmt(spread(rates), 1)}% | {fmt(med(cpus), 2)} ({fmt(min(cpus), 2)}–{fmt(max(cpus), 2)}) "
              f"| {fmt(spread(cpus), 1)}% | {fmt(med(gens), 0)}% ({fmt(min(gens), 0)}–{fmt(max(gens), 0)}%) "
              f"| {fmt(med([r['p99'] for r in reps]))} | {sum(r['lost'] for r in reps)} | {sum(r['errors'] for r in reps)} |")

if "open" in brokers and "enforced" in brokers:
    print()
    print("Authorization's cost (enforced against open, medians; goal: at most 5% fewer messages per second "
          "and at most 5% more CPU per message):")
    print()
    print("| QoS | shape | rate enforced/open | CPU/msg enforced/open | goal met? |")
    print("|---|---|---:|---:|---|")
    for qos, shape in keys:
        o = runs.get((qos, shape, "open"), [])
        e = runs.get((qos, shape, "enforced"), [])
        if not o or not e:
            continue
        rr = med([r["rate"] for r in e]) / med([r["rate"] for r in o])
        cr = med([r["cpu_us_per_msg"] for r in e]) / med([r["cpu_us_per_msg"] for r in o])
        ok = rr >= 0.95 and cr <= 1.05
        print(f"| {qos} | {shape} | {rr:.3f} | {cr:.3f} | {'yes' if ok else 'no'} |")
PY
}

if [ -n "$OUT" ]; then
    table > "$OUT"
    echo "publish-compare.sh: table written to $OUT" >&2
else
    table
fi
