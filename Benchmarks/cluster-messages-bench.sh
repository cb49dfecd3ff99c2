#!/usr/bin/env bash
# Messages across the cluster (issue 19): custody-bench publish, QoS 0 and QoS 1, on one node
# against three nodes on one etcd and one nats-server (publishers on n1; subscribers spread over
# n1, n2, n3, each getting every message), next to that nats-server's own rate with the same
# payload (custody-bench nats-publish: core NATS end to end, and JetStream acknowledged publishes
# into a file stream).
#
#   Benchmarks/cluster-messages-bench.sh [--seconds S] [--publishers P] [--subscribers N]
#                                        [--payload-bytes B] [--batch N] [--qos "0 1"]
#                                        [--nodes N] [--subscribed-nodes K] [--no-nats] [--no-build]
#
# --batch N: the nodes' --cluster-nats-batch (QoS 1/2 messages per JetStream message; 1: each
# alone, as before the batching); --qos: the QoS levels run; --no-nats: skip nats-server's own rate;
# --nodes N (2-9, default 3): the cluster's size; --subscribed-nodes K (1-N, default N): the
# cluster runs put subscribers on n1..nK only, so that the other nodes consume the stream without
# delivering (they skip every batch). Each run prints the CPU seconds custody (each node) and
# the nats-server used during it.
#
# Everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECONDS_PER_RUN=10
PUBLISHERS=4
SUBSCRIBERS=3
PAYLOAD=64
BUILD=1
BATCH=256
QOS_LEVELS="0 1"
NATS_OWN=1
NODES=3
SUBSCRIBED_NODES=
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
        --publishers) PUBLISHERS="$2"; shift 2 ;;
        --subscribers) SUBSCRIBERS="$2"; shift 2 ;;
        --payload-bytes) PAYLOAD="$2"; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --qos) QOS_LEVELS="$2"; shift 2 ;;
        --no-nats) NATS_OWN=0; shift ;;
        --subscribed-nodes) SUBSCRIBED_NODES="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "cluster-messages-bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$NODES" in [2-9]) ;; *) echo "cluster-messages-bench.sh: --nodes must be 2-9" >&2; exit 2 ;; esac
case "${SUBSCRIBED_NODES:-$NODES}" in [1-9]) [ "${SUBSCRIBED_NODES:-$NODES}" -le "$NODES" ] ;; *) false ;; esac \
    || { echo "cluster-messages-bench.sh: --subscribed-nodes must be 1-$NODES" >&2; exit 2; }

. "$ROOT/Benchmarks/lib.sh"
[ "$BUILD" = 1 ] && build_release custody custody-bench
BENCH="$BIN/custody-bench"
CUSTODY="${CUSTODY_BINARY:-$BIN/custody}"  # CUSTODY_BINARY: another build, for A/B pairs
require_files cluster-messages-bench.sh "$BENCH" "$CUSTODY" /usr/bin/etcd /usr/sbin/nats-server

make_workdir cluster-messages-bench

NATS_PORT=$(free_port) NATS_MONITOR=$(free_port)
/usr/sbin/nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR" -js -sd "$WORK/nats" > "$WORK/nats.log" 2>&1 &
PIDS+=("$!")
ETCD_CLIENT=$(free_port) ETCD_PEER=$(free_port)
/usr/bin/etcd --name m0 --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "m0=http://127.0.0.1:$ETCD_PEER" > "$WORK/etcd.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do
    curl -s -m 1 "http://127.0.0.1:$NATS_MONITOR/healthz" | grep -q '"ok"' \
        && curl -s -m 1 "http://127.0.0.1:$ETCD_CLIENT/health" | grep -q '"health":"true"' && break
    sleep 0.2
done

echo "# machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); nats-server $(/usr/sbin/nats-server --version | cut -d' ' -f2); payload ${PAYLOAD} B; ${SECONDS_PER_RUN}s per run; batch ${BATCH}"
[ "$NATS_OWN" = 1 ] && for mode in core jetstream; do
    echo "nats-server $mode: $("$BENCH" nats-publish --url "nats://127.0.0.1:$NATS_PORT" --mode "$mode" \
        --payload-bytes "$PAYLOAD" --seconds "$SECONDS_PER_RUN" | tail -1)"
done

publish() { # label port pid qos [other ports]
    local label=$1 port=$2 pid=$3 qos=$4 others=${5:-}
    local out
    out=$("$BENCH" publish --port "$port" --pid "$pid" --qos "$qos" --publishers "$PUBLISHERS" \
        --subscribers "$SUBSCRIBERS" --payload-bytes "$PAYLOAD" --seconds "$SECONDS_PER_RUN" \
        ${others:+--subscriber-ports "$others"} 2>&1)
    echo "$label qos$qos: $(echo "$out" | tail -1)"
    echo "$out" | grep -E "bench_cpu|lost|errors_by" | sed "s/^/$label qos$qos   /" || true
}

# One node, no cluster.
SINGLE_PORT=$(free_port)
"$CUSTODY" --data-dir "$WORK/single" --listen "127.0.0.1:$SINGLE_PORT" --log-level warning \
    > "$WORK/single.out" 2> "$WORK/single.err" &
SINGLE_PID=$!
PIDS+=("$SINGLE_PID")
wait_line "$WORK/single.out" "custody: running" 30 || { cat "$WORK/single.err" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (a - b) / 100 }'; }
for qos in $QOS_LEVELS; do
    before=$(cpu_ticks "$SINGLE_PID")
    publish "one node" "$SINGLE_PORT" "$SINGLE_PID" "$qos"
    echo "one node qos$qos cpu_s: custody=$(secs "$(cpu_ticks "$SINGLE_PID")" "$before")"
done
kill "$SINGLE_PID"; wait "$SINGLE_PID" 2>/dev/null || true

# The cluster (three nodes unless --nodes) on etcd and NATS.
PORTS=() NODE_PIDS=()
for i in $(seq 0 $((NODES - 1))); do
    PORTS+=("$(free_port)")
    "$CUSTODY" --data-dir "$WORK/n$((i + 1))" --listen "127.0.0.1:${PORTS[$i]}" --log-level warning \
        --cluster-etcd "http://127.0.0.1:$ETCD_CLIENT" --node-id "n$((i + 1))" \
        --cluster-nats "nats://127.0.0.1:$NATS_PORT" --cluster-nats-batch "$BATCH" \
        --connects-per-second-per-session 0 > "$WORK/n$((i + 1)).out" 2> "$WORK/n$((i + 1)).err" &
    NODE_PIDS+=("$!") PIDS+=("$!")
done
for i in $(seq 0 $((NODES - 1))); do
    wait_line "$WORK/n$((i + 1)).out" "custody: running" 30 || { cat "$WORK/n$((i + 1)).err" >&2; exit 1; }
done
SUBSCRIBED=${SUBSCRIBED_NODES:-$NODES}
OTHERS=$(IFS=,; echo "${PORTS[*]:1:$((SUBSCRIBED - 1))}")
LABEL=$([ "$NODES" = 3 ] && echo "three nodes" || echo "$NODES nodes")
for qos in $QOS_LEVELS; do
    before=() after=()
    for pid in "${NODE_PIDS[@]}" "${PIDS[0]}"; do before+=("$(cpu_ticks "$pid")"); done
    publish "$LABEL" "${PORTS[0]}" "${NODE_PIDS[0]}" "$qos" "$OTHERS"
    for pid in "${NODE_PIDS[@]}" "${PIDS[0]}"; do after+=("$(cpu_ticks "$pid")"); done
    line="$LABEL qos$qos cpu_s (subscribers on n1..n$SUBSCRIBED):"
    for i in $(seq 0 $((NODES - 1))); do line+=" n$((i + 1))=$(secs "${after[$i]}" "${before[$i]}")"; done
    echo "$line nats-server=$(secs "${after[$NODES]}" "${before[$NODES]}")"
done
# JetStream messages stored for them (with batching, fewer than the QoS 1 publishes).
echo "jetstream messages stored: $(curl -s -m 2 "http://127.0.0.1:$NATS_MONITOR/jsz" | grep -o '"messages": *[0-9]*' | head -1 | grep -o '[0-9]*$')"
# Where the CPU went over the whole three-node part: every node and the nats-server.
for i in $(seq 0 $((NODES - 1))); do
    echo "n$((i + 1)) cpu_s=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/${NODE_PIDS[$i]}/stat")"
done
echo "nats-server cpu_s=$(awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/${PIDS[0]}/stat")"
for i in $(seq 0 $((NODES - 1))); do
    if [ -s "$WORK/n$((i + 1)).err" ]; then
        echo "n$((i + 1)) log: $(wc -l < "$WORK/n$((i + 1)).err") lines, first: $(head -c 400 "$WORK/n$((i + 1)).err" | head -2 | tr '\n' ' ')"
    fi
done
