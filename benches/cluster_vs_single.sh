#!/usr/bin/env bash
# redis-benchmark against one kv-server, then against a 3-node cluster
# (N=3, W=2, R=2) on the same machine, all on loopback.
#
#   bash benches/cluster_vs_single.sh [REQUESTS]
#
# Needs redis-benchmark (apt-get install redis-tools) and a release build.
# KV_CLUSTER_ARGS adds flags to the cluster nodes (e.g. "--anti-entropy-ms 0").
# BIN_DIR runs the kv-server and kv-client found there instead (another
# build, to compare two builds back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
bin_dir=${BIN_DIR:-$PWD/target/release}
bin=$bin_dir/kv-server
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do redis-cli -p "$1" PING >/dev/null 2>&1 && return; sleep 0.1; done; echo "port $1 did not answer" >&2; exit 1; }
bench() {
  for p in 1 16; do
    redis-benchmark -p "$1" -t set,get -n "$n" -c 50 -r 100000 -d 100 -P "$p" --csv 2>/dev/null \
      | awk -F, -v label="$2" -v p="$p" 'NR>1 {gsub(/"/,""); printf "%-8s %-4s P=%-3s %10.0f rps  p50 %s ms  p99 %s ms\n", label, $1, p, $2, $5, $7}'
  done
}

"$bin" --port 7201 --data-dir "$work/single" >"$work/single.log" 2>&1 & pids+=($!)
wait_port 7201
bench 7201 single
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

# Nodes of a cluster prove to each other that they share this secret.
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$bin" --port 7211 --data-dir "$work/n1" --cluster-secret "$secret" ${KV_CLUSTER_ARGS:-} >"$work/n1.log" 2>&1 & pids+=($!)
wait_port 7211
"$bin" --port 7212 --data-dir "$work/n2" --join 127.0.0.1:7211 --cluster-secret "$secret" ${KV_CLUSTER_ARGS:-} >"$work/n2.log" 2>&1 & pids+=($!)
"$bin" --port 7213 --data-dir "$work/n3" --join 127.0.0.1:7211 --cluster-secret "$secret" ${KV_CLUSTER_ARGS:-} >"$work/n3.log" 2>&1 & pids+=($!)
wait_port 7212; wait_port 7213
# Wait until all three are members holding their ranges (joins go one at a
# time, each copying its ranges first).
for _ in $(seq 300); do
  [ "$("$bin_dir"/kv-client 127.0.0.1 7211 -c CLUSTER | grep -c ' alive normal ')" = 3 ] && break; sleep 0.1
done
bench 7211 cluster
