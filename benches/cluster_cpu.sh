#!/usr/bin/env bash
# CPU time the three nodes of a cluster spend per request, and idle:
#
#   bash benches/cluster_cpu.sh BIN_DIR [REQUESTS]
#
# starts a 3-node cluster from the kv-server and kv-client in BIN_DIR
# (e.g. target/release) on ports 7321-7323, reads utime+stime of the three
# processes from /proc before and after 3 s idle and each redis-benchmark
# run (-c 50 -r 100000 -d 100, pipeline 1 and 16).
# (benches/cluster_vs_single.sh prints the same CPU per request for a
# single node and for Redis beside it.)
set -euo pipefail
bin=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib_bench.sh
. benches/lib_bench.sh
n=${2:-200000}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
start_kv_cluster "$bin" 7321 "$work"
cpu() { cpu_ticks "${pids[@]}" | awk '{ t += $1 } END { print t }'; }
hz=$(getconf CLK_TCK)
# idle: CPU over 3 s with no load
c0=$(cpu); sleep 3; c1=$(cpu)
echo "idle: $(( (c1-c0)*1000/hz/3 )) ms CPU per s (3 nodes)"
for t in set get; do for p in 1 16; do
  c0=$(cpu)
  out=$(redis-benchmark -p 7321 -t $t -n "$n" -c 50 -r 100000 -d 100 -P $p --csv 2>/dev/null | tail -1)
  c1=$(cpu)
  rps=$(echo "$out" | awk -F, '{gsub(/"/,""); print $2}')
  p99=$(echo "$out" | awk -F, '{gsub(/"/,""); print $7}')
  us=$(( (c1-c0)*1000000/hz*1000/n/1000 ))
  echo "$t P=$p rps $rps p99 $p99 ms; CPU of the 3 nodes: $us us per request"
done; done
