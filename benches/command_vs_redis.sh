#!/usr/bin/env bash
# Throughput of one RESP command, kv-server against redis-server, side by
# side: both start with the same persistence (appendfsync everysec), and
# redis-benchmark runs the command against each in turn, ROUNDS times
# (A B A B ...), so drift in the machine's speed hits both alike.
#
#   bash benches/command_vs_redis.sh ROUNDS PIPELINE COMMAND...
#   bash benches/command_vs_redis.sh 3 16 SET key:__rand_int__ xxxxxxxxxx EX 100
#
# Prints each round's requests per second and the ratio kv/Redis; quote
# the median ratio. Needs redis-server and redis-benchmark on PATH and a
# release build (cargo build --release).
set -euo pipefail
rounds=$1 pipeline=$2
shift 2
bin=${BIN:-target/release/kv-server}
dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kp=$(free_port) rp=$(free_port)
"$bin" --port "$kp" --data-dir "$dir/kv" --fsync everysec --loglevel warning >/dev/null 2>&1 &
kv=$!
redis-server --port "$rp" --dir "$dir" --save "" --appendonly yes --appendfsync everysec >/dev/null 2>&1 &
rd=$!
trap 'kill $kv $rd 2>/dev/null; wait $kv $rd 2>/dev/null; rm -rf "$dir"' EXIT
for p in $kp $rp; do
  for _ in $(seq 100); do redis-cli -p "$p" PING >/dev/null 2>&1 && break; sleep 0.1; done
done
run() { local port=$1; shift; redis-benchmark -p "$port" -c 50 -n 200000 -r 100000 -P "$pipeline" --csv "$@" 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'; }
echo "# $* (P$pipeline, 50 clients, 200000 requests, keyspace 100000), load average $(cut -d' ' -f1 /proc/loadavg)"
echo "| round | kv rps | Redis rps | kv/Redis |"
echo "|---|---|---|---|"
for r in $(seq "$rounds"); do
  k=$(run "$kp" "$@")
  d=$(run "$rp" "$@")
  echo "| $r | $k | $d | $(python3 -c "print(f'{$k/$d:.2f}')") |"
done
