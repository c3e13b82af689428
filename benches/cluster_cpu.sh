#!/usr/bin/env bash
# CPU time the three nodes of a cluster spend per request, and idle:
#
#   bash benches/cluster_cpu.sh BIN_DIR [REQUESTS]
#
# starts a 3-node cluster from the kv-server and kv-client in BIN_DIR
# (e.g. target/release) on ports 7321-7323, reads utime+stime of the three
# processes from /proc before and after 3 s idle and each redis-benchmark
# run (-c 50 -r 100000 -d 100, pipeline 1 and 16).
bin=$1; n=${2:-200000}; work=$(mktemp -d)
secret=0123456789abcdef0123456789abcdef
pids=()
$bin/kv-server --port 7321 --data-dir $work/n1 --cluster-secret $secret >$work/n1.log 2>&1 & pids+=($!)
for _ in $(seq 100); do redis-cli -p 7321 PING >/dev/null 2>&1 && break; sleep 0.1; done
$bin/kv-server --port 7322 --data-dir $work/n2 --join 127.0.0.1:7321 --cluster-secret $secret >$work/n2.log 2>&1 & pids+=($!)
$bin/kv-server --port 7323 --data-dir $work/n3 --join 127.0.0.1:7321 --cluster-secret $secret >$work/n3.log 2>&1 & pids+=($!)
for _ in $(seq 300); do
  [ "$($bin/kv-client 127.0.0.1 7321 -c CLUSTER 2>/dev/null | grep -c ' alive normal ')" = 3 ] && break; sleep 0.1
done
cpu() { local t=0; for p in "${pids[@]}"; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); t=$((t+$1+$2)); done; echo $t; }
hz=$(getconf CLK_TCK)
# idle: CPU over 3 s with no load
c0=$(cpu); sleep 3; c1=$(cpu)
echo "idle: $(( (c1-c0)*1000/hz/3 )) ms CPU per s (3 nodes)"
for t in set get; do for p in 1 16; do
  c0=$(cpu)
  out=$(redis-benchmark -p 7321 -t $t -n $n -c 50 -r 100000 -d 100 -P $p --csv 2>/dev/null | tail -1)
  c1=$(cpu)
  rps=$(echo "$out" | awk -F, '{gsub(/"/,""); print $2}')
  p99=$(echo "$out" | awk -F, '{gsub(/"/,""); print $7}')
  us=$(( (c1-c0)*1000000/hz*1000/n/1000 ))
  echo "$t P=$p rps $rps p99 $p99 ms; CPU of the 3 nodes: $us us per request"
done; done
for p in "${pids[@]}"; do kill $p; done; wait 2>/dev/null; rm -rf $work
