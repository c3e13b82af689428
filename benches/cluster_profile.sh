#!/usr/bin/env bash
# Where a 3-node kv cluster's CPU goes during SET at pipeline 16:
#
#   bash benches/cluster_profile.sh [REQUESTS]
#
# starts a 3-node cluster (N=3, W=2, R=2) from target/release (or BIN_DIR)
# on ports 7241-7243, runs redis-benchmark -t set -P 16 -c 50 -r 100000
# -d 100 (REQUESTS, default 1000000) against node 1 under `perf record`
# (cpu-clock samples at 999 Hz of the three kv-server processes), and
# prints each node's share of the samples by thread and by where the time
# is spent: the kernel (sockets, wake-ups), malloc/free, memcpy and the
# like, serde (peer messages), std collections, and each crate of ours.
# Node 1 coordinates every request; nodes 2 and 3 only serve its
# Replicate messages.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib_bench.sh
. benches/lib_bench.sh
n=${1:-1000000}
bin_dir=${BIN_DIR:-$PWD/target/release}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_kv_cluster "$bin_dir" 7241 "$work"
nodes=("${pids[@]}")
perf record -q -F 999 -p "$(
  IFS=,
  echo "${nodes[*]}"
)" -o "$work/perf.data" >"$work/perf.log" 2>&1 &
pids+=($!)
sleep 0.5
before=$(cpu_ticks "${nodes[@]}")
redis-benchmark -p 7241 -t set -n "$n" -c 50 -r 100000 -d 100 -P 16 --csv 2>/dev/null | grep '^"SET"' | tr -d '"' |
  awk -F, '{printf "SET P=16: %.0f rps, p99 %s ms\n", $2, $7}'
after=$(cpu_ticks "${nodes[@]}")
paste <(echo "$before") <(echo "$after") | awk -v hz="$(getconf CLK_TCK)" -v n="$n" \
  '{ us = ($2 - $1) * 1e6 / hz / n; t += us; printf "node%d %.1f us  ", NR, us } END { printf "CPU per request: %.1f us\n", t }'
# Which node each thread belongs to: perf reports threads by their id.
for i in 0 1 2; do ls "/proc/${nodes[$i]}/task" | sed "s/\$/ node$((i + 1))/"; done >"$work/threads"
kill -INT "${pids[3]}"
wait "${pids[3]}" 2>/dev/null || true
unset 'pids[3]'
# PERF_DATA=FILE keeps the samples for a closer look (perf report -i FILE).
[ -n "${PERF_DATA:-}" ] && cp "$work/perf.data" "$PERF_DATA"

perf report -i "$work/perf.data" --stdio --no-children --sort pid,comm,dso,sym 2>/dev/null |
  awk 'FILENAME != "-" { node_of[$1] = $2; next }
  /^#/ || NF < 5 { next }
  {
    pct = $1; sub(/%/, "", pct); split($2, pc, ":")
    node = (pc[1] in node_of) ? node_of[pc[1]] : "other"
    thread = pc[2]; sub(/-[0-9]+$/, "", thread)
    dso = $4; sym = $0
    if (dso ~ /kernel/) part = "kernel"
    else if (sym ~ /malloc|free|realloc|_int_|unlink_chunk|tcache/) part = "malloc/free"
    else if (sym ~ /memcpy|memmove|memset|memcmp/) part = "memcpy etc."
    else if (sym ~ /serde/) part = "serde (peer messages)"
    else if (sym ~ /kv_storage/) part = "kv_storage"
    else if (sym ~ /kv_replication/) part = "kv_replication"
    else if (sym ~ /kv_ring/) part = "kv_ring"
    else if (sym ~ /kv_server/) part = "kv_server"
    else if (sym ~ /kv_proto/) part = "kv_proto"
    else if (sym ~ /btree|hashbrown|xxh|sort|from_iter/) part = "std collections, hashing"
    else if (sym ~ /clock_gettime|Timespec/) part = "clock"
    else part = "other"
    total += pct; by_node[node] += pct; by_thread[node " " thread] += pct; by_part[node " " part] += pct
  }
  END {
    printf "share of all samples (%%), by node and thread:\n"
    for (k in by_thread) printf "  %-24s %5.1f\n", k, by_thread[k] | "sort"
    close("sort")
    printf "by node and where:\n"
    for (k in by_part) printf "  %-24s %5.1f\n", k, by_part[k] | "sort"
    close("sort")
    for (k in by_node) printf "%s %.1f%%  ", k, by_node[k]
    printf "\n"
  }' "$work/threads" -
