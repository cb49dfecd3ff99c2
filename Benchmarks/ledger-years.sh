#!/usr/bin/env bash
# The ledger for years (issue 16), with release binaries:
#  1. custody-bench ledger-years: a ledger of --sessions live sessions and an --events history
#     (bulk loaded, a checkpoint every 100,000 records), its start-up time as custody opens
#     it, the bytes per event live and archived, the time to archive half of it;
#  2. a connect storm against two custody instances side by side (custody-bench compare,
#     rounds alternating): one archiving all the time (a checkpoint every 2,000 records and
#     the live log held under 1 MiB, so a segment leaves every few hundred milliseconds of
#     the storm), one with the same checkpoints and no archiving. Each run's line carries
#     the load generator's own CPU.
#
#   Benchmarks/ledger-years.sh [--sessions N] [--events N] [--seconds S] [--rounds R]
#                              [--conns C] [--no-build] [--skip-years] [--skip-storm]
#
# Everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SESSIONS=1000000
EVENTS=10000000
SECONDS_PER_RUN=5
ROUNDS=3
CONNS=64
BUILD=1
YEARS=1
STORM=1
while [ $# -gt 0 ]; do
    case "$1" in
        --sessions) SESSIONS="$2"; shift 2 ;;
        --events) EVENTS="$2"; shift 2 ;;
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --skip-years) YEARS=0; shift ;;
        --skip-storm) STORM=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "ledger-years.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody-bench custody
require_files ledger-years.sh "$BIN/custody-bench" "$BIN/custody"

make_workdir years

echo "commit $(git -C "$ROOT" rev-parse --short HEAD) $(date -u +%Y-%m-%dT%H:%M:%SZ) load $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$YEARS" = 1 ]; then
    echo "custody-bench ledger-years --sessions $SESSIONS --events $EVENTS"
    "$BIN/custody-bench" ledger-years --sessions "$SESSIONS" --events "$EVENTS" --data-dir "$WORK/years"
    rm -rf "$WORK/years"
fi

if [ "$STORM" = 1 ]; then
    start_custody() { # name port extra-flags...
        local name=$1 port=$2
        shift 2
        "$BIN/custody" --data-dir "$WORK/$name" --listen "127.0.0.1:$port" --log-level warning \
            --connects-per-second-per-session 0 --max-sessions-per-client 100 --checkpoint-every 2000 "$@" \
            > "$WORK/$name.out" 2> "$WORK/$name.err" &
        PIDS+=("$!")
        wait_port "$port" 20 || { echo "ledger-years.sh: custody $name did not start" >&2; cat "$WORK/$name.err" >&2; exit 1; }
    }
    ARCH_PORT=$(free_port)
    start_custody archiving "$ARCH_PORT" --retention-days 0 --retention-max-live-bytes 1MiB
    ARCH_PID=${PIDS[-1]}
    PLAIN_PORT=$(free_port)
    start_custody plain "$PLAIN_PORT" --retention-days 0 --retention-max-live-bytes 0
    PLAIN_PID=${PIDS[-1]}
    echo "custody-bench connect --conns $CONNS --seconds $SECONDS_PER_RUN --proto 5, $ROUNDS rounds, order alternating (archiving: --retention-max-live-bytes 1MiB; plain: no archiving; both --checkpoint-every 2000)"
    run_storm() { # name port pid
        local out
        out=$("$BIN/custody-bench" connect --port "$2" --pid "$3" --conns "$CONNS" --seconds "$SECONDS_PER_RUN" --proto 5)
        # The load generator's own CPU share (cores) = its CPU per cycle x cycles per second.
        echo "$out" | awk -v name="$1" '
            /detail/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); d[kv[1]] = kv[2] } }
            /cycles=/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] } }
            END {
                rate = r["rate"]; sub("/s", "", rate)
                printf "storm: broker=%s rate=%s/s p50=%s p99=%s p999=%s errors=%s broker_cpu_pct=%s loadgen_cpu_cores=%.2f\n", \
                    name, rate, r["p50"], r["p99"], r["p999"], r["errors"], d["broker_cpu_pct"], d["bench_cpu_us_per_cycle"] * rate / 1e6
            }'
    }
    for round in $(seq 1 "$ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then
            run_storm archiving "$ARCH_PORT" "$ARCH_PID"; sleep 0.5; run_storm plain "$PLAIN_PORT" "$PLAIN_PID"
        else
            run_storm plain "$PLAIN_PORT" "$PLAIN_PID"; sleep 0.5; run_storm archiving "$ARCH_PORT" "$ARCH_PID"
        fi
        sleep 0.5
    done | tee "$WORK/storm.txt"
    python3 - "$WORK/storm.txt" <<'PY'
import re, statistics, sys
p99 = {}
for line in open(sys.argv[1]):
    m = re.search(r"broker=(\w+) .* p99=(\d+)us", line)
    if m: p99.setdefault(m.group(1), []).append(int(m.group(2)))
a, b = statistics.median(p99["archiving"]), statistics.median(p99["plain"])
print(f"storm: p99 median archiving={a:.0f}us plain={b:.0f}us ratio={a / b:.2f} (goal <= 1.5)")
PY
    segments=$(ls "$WORK/archiving/archive" 2>/dev/null | grep -c '^segment-' || true)
    echo "archiving instance: segments=$segments archive_bytes=$(du -sb "$WORK/archiving/archive" 2>/dev/null | cut -f1) live_data_file=$(stat -c %s "$WORK/archiving/data.mdb")"
    echo "plain instance: live_data_file=$(stat -c %s "$WORK/plain/data.mdb")"
    grep -h "archiving failed" "$WORK"/*.err || true
fi
