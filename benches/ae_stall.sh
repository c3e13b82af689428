#!/usr/bin/env bash
# Does repairing a returning node stall the cluster? (issue 9, item 8.)
# Loads KEYS keys of 100 bytes into a 3-node cluster (N=3), measures GET
# latency for PHASE seconds, kills node 3 with -9, writes MISSED new keys,
# restarts node 3 on its data directory, and measures GET latency until
# node 3 holds every key (or TIMEOUT seconds pass). Prints p50/p99/max GET
# latency before and during the repair, failed requests, and the time node
# 3 took to converge.
#
#   bash benches/ae_stall.sh [KEYS] [MISSED]     (defaults 200000 100000)
#
# Environment: BIN_DIR (default target/release) picks the binaries, so the
# same script measures an older build; HINT_WINDOW (seconds, default the
# server's) set to 0 leaves the repair to anti-entropy alone; AE_MS
# (default the server's 10000) the anti-entropy interval; KEEP_LOGS=dir
# keeps the server logs and the latency samples (before.txt, during.txt:
# start time, latency in s, port, outcome per GET). Needs redis-cli and python3. The GET load is one
# client thread per node, each sending GETs of random loaded keys one at a
# time, round robin over the nodes that answer.
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-200000}
missed=${2:-100000}
phase=${PHASE:-10}
timeout=${TIMEOUT:-300}
bindir=${BIN_DIR:-$PWD/target/release}
bin=$bindir/kv-server
cli=$bindir/kv-client
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$work"/*.txt "$KEEP_LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 600); do redis-cli -p "$1" PING >/dev/null 2>&1 && return; sleep 0.1; done; echo "port $1 did not answer" >&2; exit 1; }
wait_normal() { # port, members
  for _ in $(seq 3000); do
    view=$("$cli" 127.0.0.1 "$1" -c CLUSTER 2>/dev/null || true)
    if [ "$(grep -c ' alive normal ' <<<"$view")" = "$2" ] && ! grep -q '^# rebalance' <<<"$view"; then return; fi
    sleep 0.1
  done
  echo "cluster did not settle: $view" >&2; exit 1
}
keys_on() { redis-cli -p "$1" INFO 2>/dev/null | grep -o 'keys=[0-9]*' | head -1 | cut -d= -f2; }
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
extra=()
[ -n "${HINT_WINDOW:-}" ] && extra+=(--hint-window-secs "$HINT_WINDOW")
[ -n "${AE_MS:-}" ] && extra+=(--anti-entropy-ms "$AE_MS")
declare -A pid_of
start() { # port, extra args...
  local port=$1; shift
  "$bin" --port "$port" --data-dir "$work/$port" --cluster-secret "$secret" "${extra[@]}" "$@" >>"$work/$port.log" 2>&1 &
  pids+=($!); pid_of[$port]=$!
}

load() { # first, count, port
  python3 - "$1" "$2" <<'EOF' | redis-cli -p "$3" --pipe >/dev/null
import sys
first, n = int(sys.argv[1]), int(sys.argv[2])
value = b"v" * 100
out = sys.stdout.buffer
for i in range(first, first + n):
    key = b"key%010d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(key), key, value))
EOF
}

# GETs of random loaded keys until the file $2 exists; latencies to $1.
getload() {
  python3 - "$1" "$2" "$keys" 7401 7402 7403 <<'EOF' &
import os, random, socket, sys, threading, time
out, stop, keys, ports = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
lines, lock = [], threading.Lock()
def client(port):
    s = None
    while not os.path.exists(stop):
        if s is None:
            try:
                s = socket.create_connection(("127.0.0.1", int(port)), timeout=60)
                f = s.makefile("rb")
            except OSError:
                s = None; time.sleep(0.05); continue
        key = b"key%010d" % random.randrange(keys)
        t0 = time.monotonic()
        try:
            s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
            head = f.readline()
            if head.startswith(b"$") and int(head[1:]) >= 0:
                f.read(int(head[1:]) + 2)
            ok = "ok" if head.startswith(b"$1") else "err:" + head.decode(errors="replace").strip()[:80]
        except OSError as e:
            ok = "err:" + type(e).__name__; s = None
        with lock:
            lines.append("%.6f %.6f %s %s\n" % (t0, time.monotonic() - t0, port, ok))
threads = [threading.Thread(target=client, args=(p,)) for p in ports]
for t in threads: t.start()
for t in threads: t.join()
open(out, "w").writelines(lines)
EOF
}

report() { # label, file
  python3 - "$1" "$2" <<'EOF'
import sys
label, path = sys.argv[1], sys.argv[2]
rows = [l.split(None, 3) for l in open(path)]
lat = sorted(float(r[1]) * 1000 for r in rows if r[3].strip() == "ok")
# A restarting node refuses with LOADING until it hears from a peer (by
# design, so that it never answers alone): counted apart from failures.
loading = sum(1 for r in rows if r[3].startswith("err:-LOADING"))
errs = [r[3].strip() for r in rows if r[3].strip() != "ok" and not r[3].startswith("err:-LOADING")]
def pct(p): return lat[min(len(lat) - 1, int(len(lat) * p))] if lat else float("nan")
print("%s: %d GETs ok, p50 %.2f ms, p99 %.2f ms, max %.1f ms, %d refused while starting (LOADING), %d failed%s" % (
    label, len(lat), pct(0.5), pct(0.99), lat[-1] if lat else float("nan"), loading, len(errs),
    (" (" + "; ".join(sorted(set(errs))[:3]) + ")") if errs else ""))
EOF
}

start 7401; wait_port 7401
start 7402 --join 127.0.0.1:7401; wait_normal 7401 2
start 7403 --join 127.0.0.1:7401; wait_normal 7401 3
echo "loading $keys keys of 100 bytes through 7401 ..."
load 0 "$keys" 7401
for p in 7401 7402 7403; do
  for _ in $(seq 600); do [ "$(keys_on $p)" = "$keys" ] && break; sleep 0.1; done
done
echo "loaded: $(keys_on 7401) / $(keys_on 7402) / $(keys_on 7403) keys"

echo "GET load for ${phase}s before the kill ..."
rm -f "$work/stop"; getload "$work/before.txt" "$work/stop"; lp=$!
sleep "$phase"; touch "$work/stop"; wait "$lp"
report "before" "$work/before.txt"

kill -9 "${pid_of[7403]}"; wait "${pid_of[7403]}" 2>/dev/null || true
echo "killed 7403; writing $missed new keys through 7401 ..."
load "$keys" "$missed" 7401
total=$((keys + missed))
echo "node 7401 holds $(keys_on 7401) keys"

rm -f "$work/stop"; getload "$work/during.txt" "$work/stop"; lp=$!
t0=$(date +%s.%N)
start 7403
converged=""
progress=""
for i in $(seq $((timeout * 10))); do
  sleep 0.1
  held=$(keys_on 7403 || true)
  [ $((i % 20)) = 0 ] && progress+=" $((i / 10))s:${held:-?}"
  if [ "$held" = "$total" ]; then converged=$(date +%s.%N); break; fi
done
echo "keys on 7403 after its restart:$progress"
# At least PHASE seconds of load during the repair.
while [ "$(echo "$(date +%s.%N) - $t0 < $phase" | bc)" = 1 ]; do sleep 0.2; done
touch "$work/stop"; wait "$lp"
report "during repair" "$work/during.txt"
if [ -n "$converged" ]; then
  printf "node 7403 converged (%s keys) %.1f s after its restart\n" "$total" "$(echo "$converged - $t0" | bc)"
else
  echo "node 7403 did NOT converge within ${timeout}s: it holds $(keys_on 7403 || echo '?') of $total keys"
fi
