#!/usr/bin/env bash
# Custody next to Debian's mosquitto: every custody-bench mode at 1, 16, 64 and 256
# connections, MQTT 3.1.1 and 5.0, one broker after the other (order alternating), both
# on 127.0.0.1 with persistence on. Prints a Markdown table (or writes it to --out).
#
# In the connect mode the lean C generator (Benchmarks/lean-connect.c, built with gcc) runs
# too, as the reference custody-bench is measured against (a second table).
#
# Message throughput (issue 17), in the modes `publish` and `offline` (not run by default):
# `publish` is custody-bench publish with 8 publishers and 8 subscribers, 64-byte payloads,
# QoS 0 and QoS 1, fan-in and fan-out, and QoS 1 to persistent subscribers (every PUBACK
# durable on custody); `offline` is custody-bench offline-queue --messages 100000 (a
# persistent session offline while they are queued, then drained). Both brokers keep every
# queued message (custody --queue-max-messages/--queue-max-bytes, mosquitto
# max_queued_messages 0). With either, a last table judges every goal of issue 17.
#
#   Benchmarks/compare.sh [--quick] [--seconds S] [--out FILE] [--conns "1 16 64 256"]
#                         [--protos "4 5"] [--modes "hold connect persistent takeover reject publish offline"]
#                         [--hold-extra "2000"] [--threads N] [--no-build]
#
# --threads N: custody-bench's connect mode and the lean C generator run N generator threads
# (default 1). On this
# 2-core machine one generator thread saturates before single-threaded Mosquitto does; the
# tables then show the generator's CPU as "total (busiest thread)" in % of one core.
# --quick: 1 s per run, fewer persistent sessions, no extra hold sizes. hold also runs at
# --hold-extra connections: RSS per connection means little at 1-256 connections.
# Both brokers run quiet (mosquitto: connection_messages false; custody: --log-level
# warning), so neither writes a log line per connection. Everything started here is
# stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=5
PERSISTENT_TOTAL=2000
CONNS="1 16 64 256"
PROTOS="4 5"
MODES="hold connect persistent takeover reject"
OUT=""
BUILD=1
HOLD_EXTRA="2000"
THREADS=1

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) SECONDS_PER_RUN=1; PERSISTENT_TOTAL=500; HOLD_EXTRA=""; shift ;;
        --hold-extra) HOLD_EXTRA="$2"; shift 2 ;;
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --protos) PROTOS="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
if [ "$BUILD" = 1 ]; then
    build_release custody-bench
    build_release custody || echo "compare.sh: custody did not build; measuring mosquitto only" >&2
fi
BENCH="$BIN/custody-bench"
require_files compare.sh "$BENCH"

make_workdir compare

# mosquitto: persistence on, loopback only, quiet (no per-connection log lines).
MOSQ_PORT=$(free_port)
mkdir -p "$WORK/mosquitto"
# mosquitto started as root drops to its own user: it must be able to write here.
chmod 0777 "$WORK" "$WORK/mosquitto"
cat > "$WORK/mosquitto/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $WORK/mosquitto/
log_dest file $WORK/mosquitto/mosquitto.log
connection_messages false
max_keepalive 65535
max_queued_messages 0
EOF
/usr/sbin/mosquitto -c "$WORK/mosquitto/mosquitto.conf" &
MOSQ_PID=$!
PIDS+=("$MOSQ_PID")
wait_port "$MOSQ_PORT" 10 || { echo "compare.sh: mosquitto did not start" >&2; cat "$WORK/mosquitto/mosquitto.log" >&2; exit 1; }
MOSQ_VERSION=$(/usr/sbin/mosquitto -h 2>&1 | head -1 || true)

# custody: its own ledger, loopback, 100 live sessions per user name (the policy's maximum),
# no connect rate limit (the connect cycles reuse each session name many times a second).
CUSTODY_PID=""
CUSTODY_PORT=""
CUSTODY_WHY="not built"
if [ -x "$BIN/custody" ]; then
    CUSTODY_WHY="does not listen yet (no --listen)"
    # grep -c reads all of the help: grep -q may exit first and custody die of SIGPIPE (pipefail).
    if "$BIN/custody" --help 2>&1 | grep -c -- '--listen' > /dev/null; then
        CUSTODY_PORT=$(free_port)
        "$BIN/custody" --listen "127.0.0.1:$CUSTODY_PORT" --data-dir "$WORK/custody" \
            --max-sessions-per-client 100 --connects-per-second-per-session 0 --log-level warning \
            --queue-max-messages 1000000 --queue-max-bytes 1000000000 \
            > "$WORK/custody.log" 2>&1 &
        CUSTODY_PID=$!
        PIDS+=("$CUSTODY_PID")
        for _ in $(seq 1 150); do
            grep -qs "custody: listening mqtt" "$WORK/custody.log" && break
            kill -0 "$CUSTODY_PID" 2>/dev/null || break
            sleep 0.1
        done
        if ! grep -q "custody: listening mqtt" "$WORK/custody.log"; then
            CUSTODY_WHY="did not start listening: $(tail -1 "$WORK/custody.log")"
            kill -9 "$CUSTODY_PID" 2>/dev/null || true
            CUSTODY_PID=""
        fi
    fi
fi
[ -n "$CUSTODY_PID" ] || echo "compare.sh: custody $CUSTODY_WHY; measuring mosquitto only" >&2

RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

run_one() { # broker port pid mode proto conns [shape]
    local broker=$1 port=$2 pid=$3 mode=$4 proto=$5 conns=$6 shape=${7:-}
    local extra=() command=$mode
    case "$mode" in
        persistent) extra=(--total "$PERSISTENT_TOTAL" --seconds 60) ;;
        # SHAPE: qos0-fan-in, qos1-fan-out, qos1p-fan-in (p: persistent subscribers), ...
        publish) extra=(--publishers 8 --subscribers 8 --seconds "$SECONDS_PER_RUN" --qos "${shape:3:1}" --shape "${shape#*-}")
            [ "${shape:4:1}" = p ] && extra+=(--persistent-subscribers) ;;
        offline) command=offline-queue; extra=(--messages 100000) ;;
        connect) extra=(--seconds "$SECONDS_PER_RUN" --threads "$THREADS") ;;
        *) extra=(--seconds "$SECONDS_PER_RUN") ;;
    esac
    [ "$mode" = publish ] || [ "$mode" = offline ] || extra+=(--conns "$conns")
    local json
    if json=$("$BENCH" "$command" --host 127.0.0.1 --port "$port" --pid "$pid" --proto "$proto" \
        "${extra[@]}" --json 2> "$WORK/bench.err"); then
        printf '{"broker":"%s","mode":"%s","shape":"%s","proto":%s,"conns":%s,"report":%s}\n' \
            "$broker" "$mode" "$shape" "$proto" "$conns" "$json" >> "$RESULTS"
    else
        echo "compare.sh: $broker $mode $shape proto=$proto conns=$conns failed: $(cat "$WORK/bench.err")" >&2
    fi
    echo "compare.sh: $broker $mode $shape proto=$proto conns=$conns done" >&2
}

# The lean C generator (Benchmarks/lean-connect.c), next to custody-bench in the connect mode:
# the rate a generator that does as little as possible reaches against the same broker, which
# custody-bench must come within 90% of. Skipped without gcc.
LEAN=""
if command -v gcc > /dev/null && gcc -O2 -pthread -o "$WORK/lean-connect" "$ROOT/Benchmarks/lean-connect.c" 2> "$WORK/lean.err"; then
    LEAN="$WORK/lean-connect"
else
    echo "compare.sh: lean-connect not built (no gcc?): no reference generator rows" >&2
fi

lean_one() { # broker port pid proto conns
    local broker=$1 port=$2 pid=$3 proto=$4 conns=$5
    [ -n "$LEAN" ] || return 0
    local before after line
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    if line=$("$LEAN" "$port" "$conns" "$SECONDS_PER_RUN" "$proto" "$THREADS" 2> "$WORK/lean.err"); then
        after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        python3 - "$broker" "$proto" "$conns" "$line" "$((after - before))" "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, sys
broker, proto, conns, line, ticks, hz = sys.argv[1:7]
fields = dict(p.split("=", 1) for p in line.split()[1:])
report = {k: float(v.rstrip("/sus")) for k, v in fields.items()}
report["cpu_us_per_cycle"] = int(ticks) * 1e6 / int(hz) / max(report["cycles"], 1)
print(json.dumps({"broker": broker, "mode": "connect-lean", "proto": int(proto), "conns": int(conns), "report": report}))
PY
    else
        echo "compare.sh: lean-connect $broker proto=$proto conns=$conns failed: $(cat "$WORK/lean.err")" >&2
    fi
}

# Warm both brokers before the first hold (a short connect storm and a small hold): what a
# broker pays once (code paged in, allocator arenas, the ledger's first pages) is not a cost
# per connection, and would otherwise be divided by the first hold's connections.
warm_up() { # port
    "$BENCH" connect --host 127.0.0.1 --port "$1" --conns 64 --seconds 1 --proto 4 > /dev/null 2>&1 || true
    "$BENCH" hold --host 127.0.0.1 --port "$1" --conns 50 --seconds 1 --proto 4 > /dev/null 2>&1 || true
}
case " $MODES " in
    *" hold "*)
        warm_up "$MOSQ_PORT"
        [ -z "$CUSTODY_PID" ] || warm_up "$CUSTODY_PORT"
        ;;
esac

ROUND=0
both() { # mode proto conns [shape]: both brokers, the first one alternating
    ROUND=$((ROUND + 1))
    if [ -n "$CUSTODY_PID" ] && [ $((ROUND % 2)) = 0 ]; then
        run_one custody "$CUSTODY_PORT" "$CUSTODY_PID" "$@"
        run_one mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$@"
    else
        run_one mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$@"
        [ -z "$CUSTODY_PID" ] || run_one custody "$CUSTODY_PORT" "$CUSTODY_PID" "$@"
    fi
}
for mode in $MODES; do
    case "$mode" in
        publish)
            for shape in qos0-fan-in qos0-fan-out qos1-fan-in qos1-fan-out qos1p-fan-in qos1p-fan-out; do
                both publish 5 16 "$shape"
            done
            continue ;;
        offline) both offline 5 1; continue ;;
    esac
    sizes="$CONNS"
    # hold goes first and largest first: a broker's allocator keeps what earlier runs freed,
    # so only a hold on a fresh (warmed-up) broker shows what a connection costs in RSS.
    [ "$mode" != hold ] || sizes="$HOLD_EXTRA $CONNS"
    for proto in $PROTOS; do
        for conns in $sizes; do
            both "$mode" "$proto" "$conns"
            if [ "$mode" = connect ]; then
                lean_one mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$proto" "$conns"
                [ -z "$CUSTODY_PID" ] || lean_one custody "$CUSTODY_PORT" "$CUSTODY_PID" "$proto" "$conns"
            fi
        done
    done
done

table() {
    python3 - "$RESULTS" "$MOSQ_VERSION" "${CUSTODY_PID:+running}" "$CUSTODY_WHY" "$SECONDS_PER_RUN" "$PERSISTENT_TOTAL" "$(nproc)" <<'PY'
import json, sys
path, mosq_version, custody_running, custody_why, seconds, persistent_total, cores = sys.argv[1:8]
rows = {}
messages = {}
for line in open(path):
    r = json.loads(line)
    if r["mode"] in ("publish", "offline"):
        messages[(r["mode"], r.get("shape", ""), r["broker"])] = r["report"]
    else:
        rows[(r["mode"], r["proto"], r["conns"], r["broker"])] = r["report"]

# The headline of each mode: which rate and p99 to set side by side.
headline = {
    "connect": ("rate", "p99", "cycles/s"),
    "persistent": ("resume_rate", "resume_p99", "resumes/s (create rate in detail)"),
    "takeover": ("rate", "p99", "takeovers/s"),
    "reject": ("rate", "p99", "rejections/s"),
    "hold": ("open_rate", "p99", "opens/s"),
}

def cell(report, key, fmt):
    if report is None or key not in report:
        return "–"
    return fmt(report[key])

def errors(report):
    if report is None:
        return "–"
    e = report.get("errors_by_reason", {})
    if not e:
        return "0"
    return ", ".join(f"{k} {v}" for k, v in sorted(e.items()))

def gen_cell(report):
    # The generator's CPU in % of one core; with several threads also the busiest thread's.
    if report is None or "bench_cpu_pct" not in report:
        return "–"
    if report.get("bench_threads", 1) > 1:
        return f"{report['bench_cpu_pct']:.0f} ({report['bench_busiest_thread_pct']:.0f})"
    return f"{report['bench_cpu_pct']:.0f}"

def ratio(a, b):
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}"

print(f"Machine: {cores} cores, generator and broker share it. mosquitto: {mosq_version}. "
      f"custody: {'running' if custody_running else custody_why}. {seconds} s per run "
      f"(persistent: {persistent_total} sessions). Latency = TCP connect start to CONNACK.")
print()
print("| mode | proto | conns | metric | mosquitto | mosq p99 µs | mosq CPU µs/cycle | generator CPU % | mosq errors "
      "| custody | custody p99 µs | custody CPU µs/cycle | generator CPU % | custody errors | custody/mosquitto rate | p99 ratio |")
print("|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|")
seen = sorted({(m, p, c) for (m, p, c, _) in rows if m in headline}, key=lambda k: (list(headline).index(k[0]), k[1], k[2]))
for mode, proto, conns in seen:
    rate_key, p99_key, unit = headline[mode]
    m = rows.get((mode, proto, conns, "mosquitto"))
    c = rows.get((mode, proto, conns, "custody"))
    f1 = lambda v: f"{v:,.0f}"
    print(f"| {mode} | {proto} | {conns} | {unit} | {cell(m, rate_key, f1)} | {cell(m, p99_key, f1)} "
          f"| {cell(m, 'cpu_us_per_cycle', lambda v: f'{v:.1f}')} | {gen_cell(m)} | {errors(m)} "
          f"| {cell(c, rate_key, f1)} | {cell(c, p99_key, f1)} | {cell(c, 'cpu_us_per_cycle', lambda v: f'{v:.1f}')} "
          f"| {gen_cell(c)} | {errors(c)} | {ratio(c and c.get(rate_key), m and m.get(rate_key))} "
          f"| {ratio(c and c.get(p99_key), m and m.get(p99_key))} |")
leans = sorted({(p, c) for (m, p, c, _) in rows if m == "connect-lean"})
if leans:
    print()
    print("custody-bench's connect mode next to the lean C generator (Benchmarks/lean-connect.c) against "
          "the same broker, one run after the other: custody-bench must reach 90% of the lean rate. "
          "Generator CPU is each generator's own share of one core; with several threads: "
          "total (busiest thread).")
    print()
    print("| proto | conns | broker | lean cycles/s | lean p99 µs | lean generator CPU % | lean gen µs/cycle | broker CPU µs/cycle (lean run) "
          "| custody-bench cycles/s | custody-bench generator CPU % | custody-bench gen µs/cycle | custody-bench/lean |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for proto, conns in leans:
        for broker in ("mosquitto", "custody"):
            l = rows.get(("connect-lean", proto, conns, broker))
            b = rows.get(("connect", proto, conns, broker))
            if l is None:
                continue
            f1 = lambda v: f"{v:,.0f}"
            print(f"| {proto} | {conns} | {broker} | {cell(l, 'rate', f1)} | {cell(l, 'p99', f1)} "
                  f"| {gen_cell(l)} | {cell(l, 'bench_cpu_us_per_cycle', lambda v: f'{v:.1f}')} "
                  f"| {cell(l, 'cpu_us_per_cycle', lambda v: f'{v:.1f}')} | {cell(b, 'rate', f1)} "
                  f"| {gen_cell(b)} | {cell(b, 'bench_cpu_us_per_cycle', lambda v: f'{v:.1f}')} "
                  f"| {ratio(b and b.get('rate'), l and l.get('rate'))} |")
holds = [(k, v) for k, v in rows.items() if k[0] == "hold" and "bytes_per_conn" in v]
if holds:
    print()
    print("RSS grows only when the broker's allocator has nothing left from earlier runs: the first "
          "(largest) hold on the fresh brokers (each warmed up first by a 1 s connect storm and a hold "
          "of 50) is the one that shows bytes per connection. "
          "CPU is read in 10 ms ticks, so small runs show 0.")
    print()
    print("| hold | proto | conns | broker | RSS before KiB | RSS after KiB | bytes/conn | CPU % while held |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for (mode, proto, conns, broker), v in holds:
        print(f"| hold | {proto} | {conns} | {broker} | {v['rss_before_kib']} | {v['rss_after_kib']} "
              f"| {v['bytes_per_conn']} | {v.get('hold_cpu_pct', '–')} |")

def cpu_per_delivery(report):
    # The broker's CPU per delivered message (a fan-out message counts once per subscriber).
    return report.get("cpu_us_per_msg") if report else None

shapes = [k for k in ["qos0-fan-in", "qos0-fan-out", "qos1-fan-in", "qos1-fan-out", "qos1p-fan-in", "qos1p-fan-out"]
          if any(m == "publish" and s == k for (m, s, _) in messages)]
if shapes:
    print()
    print("Message throughput: custody-bench publish, 8 publishers and 8 subscribers, 64-byte payloads, MQTT 5, "
          f"{seconds} s a run; fan-in: every subscriber on the one wildcard filter (each gets every message), fan-out: "
          "one topic per subscriber; qos1p: QoS 1 to persistent subscribers (custody answers a PUBACK once "
          "the message is durable; mosquitto's persistence is a periodic snapshot). Deliveries/s counts every "
          "subscriber's copy; CPU is the broker's per delivery.")
    print()
    print("| load | mosquitto deliveries/s | mosq p99 µs | mosq CPU µs/delivery | generator CPU % | mosq lost "
          "| custody deliveries/s | custody p99 µs | custody CPU µs/delivery | generator CPU % | custody lost | rate ratio | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape in shapes:
        m = messages.get(("publish", shape, "mosquitto"))
        c = messages.get(("publish", shape, "custody"))
        f1 = lambda v: f"{v:,.0f}"
        f2 = lambda v: f"{v:.2f}"
        print(f"| {shape} | {cell(m, 'rate', f1)} | {cell(m, 'p99', f1)} | {cell(m, 'cpu_us_per_msg', f2)} "
              f"| {cell(m, 'bench_cpu_pct', lambda v: f'{v:.0f}')} | {cell(m, 'lost', f1)} "
              f"| {cell(c, 'rate', f1)} | {cell(c, 'p99', f1)} | {cell(c, 'cpu_us_per_msg', f2)} "
              f"| {cell(c, 'bench_cpu_pct', lambda v: f'{v:.0f}')} | {cell(c, 'lost', f1)} "
              f"| {ratio(c and c.get('rate'), m and m.get('rate'))} | {ratio(cpu_per_delivery(c), cpu_per_delivery(m))} |")
offline = {b: messages.get(("offline", "", b)) for b in ("mosquitto", "custody")}
if any(offline.values()):
    print()
    print("An offline persistent session's queue: custody-bench offline-queue --messages 100000 (MQTT 5, "
          "QoS 1, 64-byte payloads, at most 32 unacknowledged).")
    print()
    print("| broker | in: acknowledged/s | CPU µs/msg in | generator CPU % in | out: delivered/s | CPU µs/msg out | generator CPU % out | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for broker, o in offline.items():
        if o is None:
            continue
        f1 = lambda v: f"{v:,.0f}"
        f2 = lambda v: f"{v:.2f}"
        print(f"| {broker} | {cell(o, 'in_rate', f1)} | {cell(o, 'cpu_us_per_msg_in', f2)} | {cell(o, 'bench_cpu_pct_in', lambda v: f'{v:.0f}')} "
              f"| {cell(o, 'out_rate', f1)} | {cell(o, 'cpu_us_per_msg_out', f2)} | {cell(o, 'bench_cpu_pct_out', lambda v: f'{v:.0f}')} | {cell(o, 'lost', f1)} |")

# Issue 17's goals, judged from this run's rows (MQTT 5 for the connect goals).
goals = []
def judge(name, value, target, higher=True, unit="×", gen=None):
    if value is None:
        goals.append((name, "–", target, "not measured", gen))
        return
    met = value >= target if higher else value <= target
    shown = f"{value:,.2f}{unit}" if unit == "×" else f"{value:,.0f}{unit}"
    bound = (">= " if higher else "<= ") + (f"{target}{unit}" if unit == "×" else f"{target:,}{unit}")
    goals.append((name, shown, bound, "met" if met else "not met", gen))
def gens(*reports):
    shares = [gen_cell(r) + "%" for r in reports if r and r.get("bench_cpu_pct") is not None]
    return "/".join(shares) if shares else "–"
def mosquitto_cpu(report, per):
    # Mosquitto is one thread: its share of one core over the run (rate x CPU per item).
    if report is None or report.get(per) is None or not report.get("rate"):
        return None
    return report["rate"] * report[per] / 1e4
def generator_bound(report, broker_pct):
    # The generator, not the broker, set the rate: its busiest thread near a full core while
    # mosquitto's one thread still had room.
    if report is None:
        return False
    busiest = report.get("bench_busiest_thread_pct", report.get("bench_cpu_pct", 0))
    return busiest >= 90 and (broker_pct is None or broker_pct < 90)
bounds = {}
for conns in sorted({c for (m, p, c, _) in rows if m == "connect" and p == 5 and c in (16, 64)}):
    m = rows.get(("connect", 5, conns, "mosquitto"))
    c = rows.get(("connect", 5, conns, "custody"))
    both_ok = m is not None and c is not None
    bounds[f"connect v5 {conns} conns"] = (mosquitto_cpu(m, "cpu_us_per_cycle"), generator_bound(m, mosquitto_cpu(m, "cpu_us_per_cycle")))
    judge(f"connect v5 {conns} conns: rate", both_ok and c["rate"] / m["rate"] or None, 0.85, gen=gens(m, c))
    judge(f"connect v5 {conns} conns: CPU per cycle", both_ok and c.get("cpu_us_per_cycle", 0) / max(m.get("cpu_us_per_cycle", 0), 1e-9) or None,
          1.25, higher=False, gen=gens(m, c))
    judge(f"connect v5 {conns} conns: custody p99", c and c.get("p99"), 5000, higher=False, unit=" µs", gen=gens(c))
for shape, rate_goal, cpu_goal in [("qos0-fan-in", 1.0, 1.0), ("qos0-fan-out", 1.0, 1.0), ("qos1-fan-in", 1.0, 1.25),
                                   ("qos1-fan-out", 1.0, 1.25), ("qos1p-fan-in", 0.8, None), ("qos1p-fan-out", 0.8, None)]:
    m = messages.get(("publish", shape, "mosquitto"))
    c = messages.get(("publish", shape, "custody"))
    if m is None and c is None:
        continue
    both_ok = m is not None and c is not None and m.get("rate")
    bounds[shape] = (mosquitto_cpu(m, "cpu_us_per_msg"), generator_bound(m, mosquitto_cpu(m, "cpu_us_per_msg")))
    judge(f"{shape}: deliveries/s", both_ok and c["rate"] / m["rate"] or None, rate_goal, gen=gens(m, c))
    if cpu_goal is not None:
        mc, cc = cpu_per_delivery(m), cpu_per_delivery(c)
        judge(f"{shape}: CPU per delivery", mc and cc and cc / mc or None, cpu_goal, higher=False, gen=gens(m, c))
if offline.get("custody"):
    o = offline["custody"]
    judge("offline queue: in (custody)", o.get("in_rate"), 50000, unit="/s", gen=f"{o.get('bench_cpu_pct_in', 0):.0f}%")
    judge("offline queue: out (custody)", o.get("out_rate"), 50000, unit="/s", gen=f"{o.get('bench_cpu_pct_out', 0):.0f}%")
if goals:
    print()
    print("Issue 17's goals from this run (ratios are custody / mosquitto; generator CPU is custody-bench's share "
          "of one core in the runs the figure comes from: mosquitto's / custody's).")
    print()
    print("A mosquitto figure is generator-bound when custody-bench's busiest thread used 90% of a core or "
          "more while mosquitto's one thread used less than 90%: mosquitto could have gone faster, and a "
          "ratio with it as denominator is an upper bound.")
    print()
    print("| goal | measured | target | verdict | generator CPU | mosquitto CPU % | mosquitto figure |")
    print("|---|---:|---|---|---:|---:|---|")
    for name, shown, bound, verdict, gen in goals:
        key = next((k for k in bounds if name.startswith(k + ":")), None)
        broker_pct, gen_bound = bounds.get(key, (None, False))
        pct = f"{broker_pct:.0f}" if broker_pct is not None else "–"
        if not key or broker_pct is None:
            figure = "–"
        elif gen_bound:
            figure = "generator-bound"
        elif broker_pct >= 90:
            figure = "mosquitto at its limit"
        else:
            figure = "neither at its limit"
        print(f"| {name} | {shown} | {bound} | {verdict} | {gen or '–'} | {pct} | {figure} |")
PY
}

if [ -n "$OUT" ]; then
    table > "$OUT"
    echo "compare.sh: table written to $OUT" >&2
else
    table
fi
