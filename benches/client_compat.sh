#!/usr/bin/env bash
# Do Redis client libraries work unchanged? (issue 11, item 7.) Runs the
# same application script (tests/compat/app.py and app.js: strings,
# counters, expiry, MGET/MSET, SCAN, pipelines, MULTI/EXEC, CLIENT names)
# through redis-py (sync and asyncio, RESP2 and RESP3), node-redis (RESP2
# and RESP3) and ioredis, against a real redis-server and against
# kv-server, and prints a table of the steps whose answers match. Exits 1
# if any step differs, except the one expected difference (LPUSH: kv
# stores strings only and refuses lists by name).
#
#   bash benches/client_compat.sh
#
# Installs the libraries from PyPI and npm into COMPAT_DIR (default
# /tmp/kv-client-compat; kept between runs). Needs python3 with venv,
# node and npm, and redis-server. BIN_DIR (default target/release) picks
# kv-server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${BIN_DIR:-$root/target/release}/kv-server
dir=${COMPAT_DIR:-/tmp/kv-client-compat}
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ]; then python3 -m venv "$dir/venv"; fi
"$dir/venv/bin/pip" install -q --upgrade redis
if [ ! -d "$dir/node_modules/ioredis" ] || [ ! -d "$dir/node_modules/redis" ]; then
  (cd "$dir" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --silent redis ioredis)
fi
pyver=$("$dir/venv/bin/python" -c 'import redis; print(redis.__version__)')
nodever=$(cd "$dir" && node -e "console.log(require('redis/package.json').version)")
iover=$(cd "$dir" && node -e "console.log(require('ioredis/package.json').version)")

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do redis-cli -p "$1" PING >/dev/null 2>&1 && return; sleep 0.1; done; echo "port $1 did not answer" >&2; exit 1; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
kv_port=$(free_port)
"$bin" --port "$kv_port" --no-persistence >"$work/kv.log" 2>&1 &
pids+=($!)
wait_port "$redis_port"
wait_port "$kv_port"

clients=(
  "redis-py $pyver sync RESP2|py 2 sync"
  "redis-py $pyver sync RESP3|py 3 sync"
  "redis.asyncio $pyver RESP2|py 2 async"
  "redis.asyncio $pyver RESP3|py 3 async"
  "node-redis $nodever RESP2|js node-redis 2"
  "node-redis $nodever RESP3|js node-redis 3"
  "ioredis $iover|js ioredis"
)
run() { # kind args..., port
  local port=$1 kind=$2; shift 2
  case $kind in
    py) "$dir/venv/bin/python" tests/compat/app.py 127.0.0.1 "$port" "$@" ;;
    js) NODE_PATH="$dir/node_modules" node tests/compat/app.js 127.0.0.1 "$port" "$@" ;;
  esac
}
status=0
echo "| client | steps | same answer as redis-server | differences |"
echo "|---|---|---|---|"
for entry in "${clients[@]}"; do
  name=${entry%%|*}
  read -r -a how <<<"${entry#*|}"
  run "$redis_port" "${how[@]}" >"$work/redis.out" 2>"$work/redis.err" || { echo "$name failed against redis-server: $(cat "$work/redis.err")" >&2; status=1; continue; }
  if ! run "$kv_port" "${how[@]}" >"$work/kv.out" 2>"$work/kv.err"; then
    echo "| $name | - | could not run | $(tr '\n' ' ' <"$work/kv.err") |"
    status=1
    continue
  fi
  verdict=$(python3 - "$work/redis.out" "$work/kv.out" <<'PY'
import json, sys
expected = {"unsupported type"}  # LPUSH: kv refuses lists by name
redis = [json.loads(l) for l in open(sys.argv[1])]
kv = [json.loads(l) for l in open(sys.argv[2])]
same, diffs, unexpected = 0, [], False
for r, k in zip(redis, kv):
    if r == k:
        same += 1
        continue
    diffs.append(f"{r['step']}: redis {json.dumps(r['result'])}, kv {json.dumps(k['result'])}")
    unexpected |= r["step"] not in expected
if len(redis) != len(kv):
    diffs.append(f"{len(redis)} steps against {len(kv)}")
    unexpected = True
print(f"{len(redis)}\t{same}\t{'; '.join(diffs) or '-'}\t{int(unexpected)}")
PY
)
  IFS=$'\t' read -r steps same diffs bad <<<"$verdict"
  echo "| $name | $steps | $same | $diffs |"
  [ "$bad" = 0 ] || status=1
done
exit $status
