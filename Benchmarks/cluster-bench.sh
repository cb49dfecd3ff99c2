#!/usr/bin/env bash
# The cluster on etcd (issue 18): a 3-member etcd on 127.0.0.1 and 3 custody nodes on it.
#   1. etcd's own rate for the Txn a claim makes (custody-bench etcd-txn: compare two keys
#      absent, put both) at CONNS in flight, through the same JSON-gateway client custody uses;
#   2. custody-bench connect across the 3 nodes at once (CONNS connections in all, a third on
#      each): every cycle is a claim (CONNECT) and a release (expiry 0: the session and its
#      slot deleted), each recorded in the node's own ledger; a node sends its claims and
#      releases of the moment to etcd together, in one Txn.
# Prints one line per run and a summary: connect cycles/s summed over the nodes, the worst
# p99, against etcd's own rate, and how many Txns that wrote etcd took (its revision's rise;
# keepalives do not count) per cycle.
#
#   Benchmarks/cluster-bench.sh [--seconds S] [--conns N] [--rounds R] [--lease S] [--no-build]
# (--rounds: 2 again, on the same etcd and nodes, each against the one measure of 1).
#
# Everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=10
CONNS=64
ROUNDS=1
LEASE=10
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --conns) CONNS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --lease) LEASE="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "cluster-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody custody-bench
BENCH="$BIN/custody-bench"
CUSTODY="$BIN/custody"
require_files cluster-bench.sh "$BENCH" "$CUSTODY" /usr/bin/etcd

make_workdir cluster-bench

# etcd: three members, each its own data directory, client and peer ports.
CLIENT=() PEER=() CLUSTER=""
for i in 0 1 2; do
    CLIENT+=("$(free_port)") PEER+=("$(free_port)")
    CLUSTER+="${CLUSTER:+,}m$i=http://127.0.0.1:${PEER[$i]}"
done
for i in 0 1 2; do
    /usr/bin/etcd --name "m$i" --data-dir "$WORK/etcd-m$i" \
        --listen-client-urls "http://127.0.0.1:${CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PEER[$i]}" \
        --initial-cluster "$CLUSTER" --initial-cluster-token "bench-$$" --initial-cluster-state new \
        > "$WORK/etcd-m$i.log" 2>&1 &
    PIDS+=("$!")
done
for i in 0 1 2; do
    for _ in $(seq 1 100); do
        curl -s -m 1 "http://127.0.0.1:${CLIENT[$i]}/health" | grep -q '"health":"true"' && break
        sleep 0.2
    done
done
ENDPOINTS=$(printf 'http://127.0.0.1:%s,' "${CLIENT[@]}"); ENDPOINTS=${ENDPOINTS%,}

echo "# machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); etcd $(/usr/bin/etcd --version | head -1 | cut -d' ' -f3)"
# etcd's own rate, once, on the fresh etcd: a second run of etcd-txn on the same members is
# several times slower (1,877 then 394 and 345 Txn/s here, without any custody node: what the
# first run's 20,000 keys and their deletion leave behind), so it is no yardstick then.
echo "# etcd's own claim-shaped Txns, $CONNS in flight, ${SECONDS_PER_RUN}s"
ETCD_LINE=$("$BENCH" etcd-txn --endpoints "$ENDPOINTS" --conns "$CONNS" --seconds "$SECONDS_PER_RUN" | tail -1)
echo "$ETCD_LINE"

# Three nodes, each asking its own member first.
PORTS=() NODE_PIDS=()
for i in 0 1 2; do
    PORTS+=("$(free_port)")
    OWN="http://127.0.0.1:${CLIENT[$i]}"
    ORDER="$OWN$(printf ',http://127.0.0.1:%s' "${CLIENT[@]}" | sed "s#,$OWN##")"
    "$CUSTODY" --data-dir "$WORK/n$((i + 1))" --listen "127.0.0.1:${PORTS[$i]}" --log-level warning \
        --cluster-etcd "$ORDER" --node-id "n$((i + 1))" --cluster-lease-seconds "$LEASE" \
        --connects-per-second-per-session 0 > "$WORK/n$((i + 1)).out" 2> "$WORK/n$((i + 1)).err" &
    NODE_PIDS+=("$!") PIDS+=("$!")
done
for i in 0 1 2; do
    wait_line "$WORK/n$((i + 1)).out" "custody: running" 30 || { cat "$WORK/n$((i + 1)).err" >&2; exit 1; }
done

# etcd's revision: every Txn that writes raises it by one (a failed compare writes nothing).
revision() {
    curl -s -m 2 -X POST "http://127.0.0.1:${CLIENT[0]}/v3/kv/range" -d '{"key":"AA=="}' |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["header"]["revision"])'
}

for ROUND in $(seq 1 "$ROUNDS"); do
echo "# round $ROUND of $ROUNDS: load average $(cut -d' ' -f1-3 /proc/loadavg)"

echo "# custody-bench connect on the 3 nodes at once, $CONNS connections in all, ${SECONDS_PER_RUN}s"
REVISION_BEFORE=$(revision)
PER_NODE=$(( (CONNS + 2) / 3 ))
for i in 0 1 2; do
    "$BENCH" connect --port "${PORTS[$i]}" --pid "${NODE_PIDS[$i]}" --conns "$PER_NODE" \
        --seconds "$SECONDS_PER_RUN" > "$WORK/bench-n$((i + 1)).out" 2>&1 &
    BENCH_PIDS[$i]=$!
done
for i in 0 1 2; do wait "${BENCH_PIDS[$i]}" || true; done
REVISION_AFTER=$(revision)
for i in 0 1 2; do
    echo "n$((i + 1)) $(tail -1 "$WORK/bench-n$((i + 1)).out")"
    grep errors_by_reason "$WORK/bench-n$((i + 1)).out" | sed "s/^/n$((i + 1)) /" || true
    # What the node logged (warnings and errors): the first lines, and how many.
    if [ -s "$WORK/n$((i + 1)).err" ]; then
        echo "n$((i + 1)) log: $(wc -l < "$WORK/n$((i + 1)).err") lines, first: $(head -c 400 "$WORK/n$((i + 1)).err" | head -2 | tr '\n' ' ')"
    fi
done

python3 - "$ETCD_LINE" "$((REVISION_AFTER - REVISION_BEFORE))" "$WORK"/bench-n1.out "$WORK"/bench-n2.out "$WORK"/bench-n3.out <<'PY'
import sys, re
def fields(line):
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
etcd = fields(sys.argv[1])
etcd_rate = float(etcd["rate"].rstrip("/s"))
rates, p99s, errors, cpus, broker = [], [], 0, [], []
written = int(sys.argv[2])
cycles = 0
for path in sys.argv[3:]:
    last = open(path).read().strip().splitlines()[-1]
    f = fields(last)
    rates.append(float(f["rate"].rstrip("/s")))
    p99s.append(int(f["p99"].rstrip("us")))
    errors += int(f["errors"])
    cycles += int(f["cycles"])
    cpus.append(float(f["bench_cpu_pct"]))
    if "cpu_us_per_cycle" in f: broker.append(float(f["cpu_us_per_cycle"]))
total = sum(rates)
print(f"summary: connect_rate={total:.0f}/s p99_worst={max(p99s)}us errors={errors} "
      f"etcd_own_txn_rate={etcd_rate:.0f}/s connects_vs_etcd={total / etcd_rate:.2f} "
      f"write_txns={written} write_txns_per_cycle={written / max(cycles, 1):.2f} "
      f"bench_cpu_pct={'/'.join(f'{c:.0f}' for c in cpus)} etcd_bench_cpu_pct={float(etcd['bench_cpu_pct']):.0f} "
      f"node_cpu_us_per_cycle={'/'.join(f'{b:.0f}' for b in broker)}")
PY
done
