#!/bin/bash
# GET throughput and latency on some connections while others run INCR,
# under --fsync always (docs/performance.md, "GET during an INCR load").
# Usage: benches/rmw_get.sh KV_SERVER_BINARY [PORT] [INCR_CLIENTS]
# Prints redis-benchmark's CSV line for GET (rps, avg, min, p50, p95, p99,
# max in ms) and the INCR rate measured over the same time.
set -euo pipefail
BIN=$1; PORT=${2:-7711}; INCR_CLIENTS=${3:-1}
DIR=$(mktemp -d)
"$BIN" --port "$PORT" --data-dir "$DIR" --fsync always --threads 2 > "$DIR/log" 2>&1 &
SRV=$!
for _ in $(seq 50); do redis-cli -p "$PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
redis-benchmark -p "$PORT" -t incr -c "$INCR_CLIENTS" -n 100000000 -q > /dev/null 2>&1 &
LOAD=$!
sleep 2
c0=$(redis-cli -p "$PORT" get counter:__rand_int__); t0=$(date +%s.%N)
redis-benchmark -p "$PORT" -t get -c 10 -n 20000 --csv 2> /dev/null | tail -1
c1=$(redis-cli -p "$PORT" get counter:__rand_int__); t1=$(date +%s.%N)
echo "INCR during the GET run: $(python3 -c "print(round(($c1-$c0)/($t1-$t0)))") rps"
kill "$LOAD"; wait "$LOAD" 2> /dev/null || true
kill "$SRV"; wait "$SRV" || true
rm -rf "$DIR"
