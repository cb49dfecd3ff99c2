#!/usr/bin/env bash
# Builds release binaries and runs the ledger benchmarks that Benchmarks/RESULTS.md records:
# `custody-bench ledger` (claims, disconnects and expires N sessions through the real
# ledger with group commit, then replays and verifies) and `custody-bench replay` on the
# ledger it left. Usage: Benchmarks/ledger-bench.sh [SESSIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-333334}
rounds=${2:-3}
Tools/custody-setup
swift build -c release --product custody-bench >/dev/null
bench=.build/release/custody-bench
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
