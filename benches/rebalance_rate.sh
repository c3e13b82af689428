#!/usr/bin/env bash
# How fast ranges stream when a node joins: loads KEYS keys of 100 bytes
# into a 3-node cluster (N=3), starts a fourth node with --join, and reads
# the figures the new node logs when it has received all its ranges
# (bytes, seconds, MB/s); then times a LEAVE of that node the same way.
#
#   bash benches/rebalance_rate.sh [KEYS]     (default 1000000)
#
# Needs redis-cli (apt-get install redis-tools) and a release build. All
# four servers run on this machine, on loopback; the rate limit is off
# (--rebalance-rate 0) so the figure is what the code and the machine do.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000}
bin=$PWD/target/release/kv-server
cli=$PWD/target/release/kv-client
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/; fi; rm -rf "$work"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do redis-cli -p "$1" PING >/dev/null 2>&1 && return; sleep 0.1; done; echo "port $1 did not answer" >&2; exit 1; }
# Waits until the node on port $1 sees $2 members, all alive and normal.
wait_normal() {
  for _ in $(seq 3000); do
    view=$("$cli" 127.0.0.1 "$1" -c CLUSTER 2>/dev/null || true)
    if [ "$(grep -c ' alive normal ' <<<"$view")" = "$2" ] && ! grep -q '^# rebalance' <<<"$view"; then return; fi
    sleep 0.1
  done
  echo "cluster did not settle: $view" >&2; exit 1
}
# Nodes of a cluster prove to each other that they share this secret.
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
start() { # port, extra args...
  local port=$1; shift
  "$bin" --port "$port" --data-dir "$work/$port" --rebalance-rate 0 --cluster-secret "$secret" "$@" >"$work/$port.log" 2>&1 & pids+=($!)
  wait_port "$port"
}

start 7301
start 7302 --join 127.0.0.1:7301
wait_normal 7301 2
start 7303 --join 127.0.0.1:7301
wait_normal 7301 3

echo "loading $keys keys of 100 bytes through 127.0.0.1:7301 ..."
python3 - "$keys" <<'EOF' | redis-cli -p 7301 --pipe >/dev/null
import sys
n = int(sys.argv[1])
value = b"v" * 100
out = sys.stdout.buffer
for i in range(n):
    key = b"key%010d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(key), key, value))
EOF
echo "loaded; node 7301 holds $(redis-cli -p 7301 INFO 2>/dev/null | grep -o 'keys=[0-9]*' | head -1 || true)"

t0=$(date +%s.%N)
start 7304 --join 127.0.0.1:7301
wait_normal 7301 4
t1=$(date +%s.%N)
grep rebalance "$work/7304.log" | sed "s/^kv-server: /  7304: /"
echo "JOIN: $(grep "rebalance: received all" "$work/7304.log" | sed "s/^kv-server: //")"
printf "JOIN: start to all-normal %.1f s (includes the wait for every node to learn of the join, one request timeout)\n" "$(echo "$t1 - $t0" | bc)"

t0=$(date +%s.%N)
"$cli" 127.0.0.1 7301 -c "LEAVE 127.0.0.1:7304" >/dev/null
for _ in $(seq 3000); do
  "$cli" 127.0.0.1 7301 -c CLUSTER | grep -q '127.0.0.1:7304 left left' && break; sleep 0.1
done
t1=$(date +%s.%N)
for p in 7301 7302 7303; do
  line=$(grep 'rebalance: received all' "$work/$p.log" | tail -1 | sed 's/^kv-server: //' || true)
  [ -n "$line" ] && echo "LEAVE: $p $line"
done
printf "LEAVE: command to left %.1f s\n" "$(echo "$t1 - $t0" | bc)"
