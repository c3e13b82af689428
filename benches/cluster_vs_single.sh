#!/usr/bin/env bash
# redis-benchmark against one kv-server, a 3-node kv cluster (N=3, W=2,
# R=2), one redis-server and a 3-master Redis Cluster (no replicas), one
# after another on the same machine, all on loopback, with the same
# parameters (-c 50 -r 100000 -d 100; SET and GET at pipeline 1 and 16).
#
#   bash benches/cluster_vs_single.sh [REQUESTS [REQUESTS_P16]]
#
# REQUESTS per test at pipeline 1 (default 200000), REQUESTS_P16 at
# pipeline 16 (default 5 x REQUESTS, so that a single node's run lasts over
# a second). Prints, per test, requests/s, p50, p99 and the CPU
# (utime+stime) the server processes spent per request; then, for each
# system, cluster / single throughput, p99s and CPU per request.
#
# Persistence is alike on both sides: kv-server's default `--fsync
# everysec` (every write appended to the log, fsync once a second, the log
# compacted into a snapshot once it outgrows 64 MiB) against redis-server
# `--appendonly yes --appendfsync everysec --save ""` (every write appended
# to the AOF, fsync once a second, rewritten past 64 MiB; no RDB saves,
# which kv-server has no counterpart of).
#
# Needs redis-benchmark and redis-server 7.0+ (for `--cluster`) and a
# release build. KV_CLUSTER_ARGS adds flags to the kv cluster nodes (e.g.
# "--anti-entropy-ms 0"). BIN_DIR runs the kv-server and kv-client found
# there instead (another build, to compare two builds back to back).
# REDIS=0 skips the two Redis systems.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib_bench.sh
. benches/lib_bench.sh
n1=${1:-200000}
n16=${2:-$((5 * n1))}
bin_dir=${BIN_DIR:-$PWD/target/release}
bin=$bin_dir/kv-server
work=$(mktemp -d)
out=$work/results
pids=()
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%F %H:%M UTC'), $n1 requests at P=1, $n16 at P=16"
echo "before: $(uptime)"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# stop_all: ends every process started so far, by pid, and waits for it.
stop_all() { for p in "${pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done; pids=(); }

"$bin" --port 7201 --data-dir "$work/single" >"$work/single.log" 2>&1 & pids+=($!)
wait_port 7201
bench_runs kv-single 7201 "" "${pids[@]}"
stop_all

# shellcheck disable=SC2086 # KV_CLUSTER_ARGS is a list of flags
start_kv_cluster "$bin_dir" 7211 "$work" ${KV_CLUSTER_ARGS:-}
# Every request goes to node 1, which coordinates it; CPU is listed as
# node 1 + node 2 + node 3.
bench_runs kv-cluster 7211 "" "${pids[@]}"
stop_all

if [ "${REDIS:-1}" != 0 ]; then
  redis_server() { # PORT DIR [FLAGS...]
    local port=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync everysec \
      --save "" "$@" >"$dir/log" 2>&1 & pids+=($!)
  }
  redis_server 7221 "$work/redis"
  wait_port 7221
  bench_runs redis-single 7221 "" "${pids[@]}"
  stop_all

  for port in 7231 7232 7233; do
    redis_server $port "$work/r$port" --cluster-enabled yes --cluster-config-file "$work/r$port/nodes.conf"
  done
  for port in 7231 7232 7233; do wait_port $port; done
  redis-cli --cluster create 127.0.0.1:7231 127.0.0.1:7232 127.0.0.1:7233 --cluster-replicas 0 --cluster-yes \
    >"$work/create.log" 2>&1
  for port in 7231 7232 7233; do
    for _ in $(seq 100); do redis-cli -p $port CLUSTER INFO | grep -q cluster_state:ok && break; sleep 0.1; done
    redis-cli -p $port CLUSTER INFO | grep -q cluster_state:ok || { echo "Redis Cluster not ok on $port" >&2; exit 1; }
  done
  # redis-benchmark spreads its 50 clients over the three masters, each
  # client using keys of its master's slots.
  bench_runs redis-cluster 7231 --cluster "${pids[@]}"
  stop_all
fi

echo "after: $(uptime)"
echo
echo "cluster / single, per system (rps ratio; p99 single -> cluster; CPU us/req single -> cluster):"
awk '
  { split($1, s, "-"); key = s[1] " " $2 " P=" $3; rps[key, s[2]] = $4; p99[key, s[2]] = $5; cpu[key, s[2]] = $6
    if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
  END { for (i = 1; i <= n; i++) { k = order[i]
    printf "%-20s %5.2f   p99 %7.3f -> %7.3f ms   CPU %5.1f -> %5.1f us/req\n", k, rps[k, "cluster"] / rps[k, "single"],
      p99[k, "single"], p99[k, "cluster"], cpu[k, "single"], cpu[k, "cluster"] } }' "$out"
