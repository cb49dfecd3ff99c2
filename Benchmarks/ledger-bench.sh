#!/usr/bin/env bash
# Builds release binaries and runs the ledger benchmarks that Benchmarks/RESULTS.md records:
# `custody-bench ledger` (claims, disconnects and expires N sessions through the real
# ledger with group commit, then replays and verifies) and `custody-bench replay` on the
# ledger it left, and `custody-audit verify` on it (the 1,000,000-event goal of the audit
# issue: 333,334 sessions make 1,000,002 events). Usage: Benchmarks/ledger-bench.sh [SESSIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-333334}
rounds=${2:-3}
Tools/custody-setup
# The same release build folder as compare.sh.
swift build -c release --scratch-path .build-release --product custody-bench >/dev/null
swift build -c release --scratch-path .build-release --product custody-audit >/dev/null
bench=.build-release/release/custody-bench
audit=.build-release/release/custody-audit
work=$(mktemp -d /tmp/custody-ledger-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(df -T "$work" | awk 'NR==2 {print $2}') at $work"
for round in $(seq 1 "$rounds"); do
    rm -rf "$work/ledger"
    echo "## round $round: $bench ledger --sessions $sessions --data-dir $work/ledger"
    "$bench" ledger --sessions "$sessions" --data-dir "$work/ledger"
done
echo "## $bench replay --data-dir $work/ledger"
"$bench" replay --data-dir "$work/ledger" --rounds "$rounds"
for round in $(seq 1 "$rounds"); do
    echo "## $audit verify --data-dir $work/ledger"
    start=$(date +%s.%N)
    "$audit" verify --data-dir "$work/ledger"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "verify_seconds=%.3f\n", e - s }'
done
