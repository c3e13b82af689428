# Helpers for the redis-benchmark scripts in benches/; source it, then set
#   n1   requests per test at pipeline 1
#   n16  requests per test at pipeline 16
#   out  a file that collects one result line per test (optional)
# before calling bench_runs.

# wait_port PORT: returns once PING on 127.0.0.1:PORT answers (10 s at most).
wait_port() {
  for _ in $(seq 100); do redis-cli -p "$1" PING >/dev/null 2>&1 && return; sleep 0.1; done
  echo "port $1 did not answer" >&2
  exit 1
}

# start_kv_cluster BIN_DIR PORT DIR [FLAGS...]: starts a 3-node kv cluster
# (N=3, W=2, R=2) from BIN_DIR's kv-server on 127.0.0.1:PORT, PORT+1 and
# PORT+2, data and logs under DIR, FLAGS added to every node; appends the
# pids to the array `pids`; returns once all three are members holding
# their ranges (joins go one at a time, each copying its ranges first).
start_kv_cluster() {
  local bin_dir=$1 port=$2 dir=$3 secret i
  shift 3
  # Nodes of a cluster prove to each other that they share this secret.
  secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  "$bin_dir/kv-server" --port "$port" --data-dir "$dir/n1" --cluster-secret "$secret" "$@" >"$dir/n1.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  for i in 1 2; do
    "$bin_dir/kv-server" --port $((port + i)) --data-dir "$dir/n$((i + 1))" --join "127.0.0.1:$port" \
      --cluster-secret "$secret" "$@" >"$dir/n$((i + 1)).log" 2>&1 &
    pids+=($!)
  done
  wait_port $((port + 1))
  wait_port $((port + 2))
  for _ in $(seq 300); do
    [ "$("$bin_dir/kv-client" 127.0.0.1 "$port" -c CLUSTER | grep -c ' alive normal ')" = 3 ] && return
    sleep 0.1
  done
  echo "the cluster on port $port did not form" >&2
  exit 1
}

# cpu_ticks PID...: utime+stime of each process (all its threads), in clock
# ticks, one number per process. Fields are counted after the ")" that ends
# the command name, so a name with spaces does not shift them.
cpu_ticks() {
  for pid in "$@"; do sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; done
}

# bench_runs LABEL PORT "EXTRA" PID...: for pipeline 1 then 16, SET then GET
# (each its own redis-benchmark run, -c 50 -r 100000 -d 100, plus EXTRA, e.g.
# "--cluster"), against 127.0.0.1:PORT. Prints per test: requests/s, p50,
# p99, and the CPU (utime+stime) the server processes PID... spent per
# request, in µs, in total and per process. Appends "LABEL TEST P RPS P99
# CPU" to $out if it is set.
bench_runs() {
  local label=$1 port=$2 extra=$3
  shift 3
  local hz p t req before after line
  hz=$(getconf CLK_TCK)
  for p in 1 16; do
    req=$n1
    [ "$p" = 16 ] && req=$n16
    for t in set get; do
      before=$(cpu_ticks "$@")
      # shellcheck disable=SC2086 # EXTRA is a list of flags
      line=$(redis-benchmark -p "$port" $extra -t "$t" -n "$req" -c 50 -r 100000 -d 100 -P "$p" --csv 2>/dev/null |
        grep -i "^\"$t\"" | tr -d '"') || {
        echo "redis-benchmark $t P=$p against port $port gave no result" >&2
        exit 1
      }
      after=$(cpu_ticks "$@")
      paste <(echo "$before") <(echo "$after") | awk -F'\t' -v line="$line" -v label="$label" -v p="$p" \
        -v hz="$hz" -v req="$req" -v out="${out:-/dev/null}" '
        { us = ($2 - $1) * 1e6 / hz / req; total += us; parts = parts (NR > 1 ? "+" : "") sprintf("%.1f", us) }
        END {
          split(line, f, ",")
          printf "%-14s %-4s P=%-3s %10.0f rps  p50 %6.3f ms  p99 %7.3f ms  CPU %5.1f us/req", label, f[1], p, f[2], f[5], f[7], total
          if (NR > 1) printf " (%s)", parts
          printf "\n"
          printf "%s %s %s %s %s %.1f\n", label, f[1], p, f[2], f[7], total >> out
        }'
    done
  done
}
