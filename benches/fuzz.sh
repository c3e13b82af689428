#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 60) under cargo-fuzz
# (libFuzzer; needs a nightly toolchain and `cargo install cargo-fuzz`),
# and prints, per target, the executions per second, the total
# executions and the peak memory.
#
#   benches/fuzz.sh [SECONDS] [TARGET...]
#
# Targets default to all of fuzz/fuzz_targets/. New inputs the fuzzer
# finds go to fuzz/target/work-corpus/<target> (not the committed
# fuzz/corpus/<target>, which is read as a second corpus); a crash, hang
# or allocation past the limits leaves its input in fuzz/artifacts/<target>/
# and makes the script exit 1 after the other targets ran. Minimize one with
# `cargo +nightly fuzz tmin <target> <file>` and commit it under
# fuzz/regressions/<target>/ (crates/kv-fuzz/tests/replay.rs replays it).
#
# Limits: inputs of at most MAX_LEN bytes (default 4096), 5 s per input,
# 512 MB of resident memory, no single allocation over 256 MB.
# SANITIZER=none (default: address) drops AddressSanitizer: faster, and
# the decoders are safe Rust, but unsafe code in dependencies goes unchecked.
set -euo pipefail

secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi
max_len=${MAX_LEN:-4096}
san=(-s "${SANITIZER:-address}")

cargo +nightly fuzz build -O "${san[@]}"

failed=0
printf '%-14s %10s %14s %8s %s\n' target exec/s executions rss_mb result
for t in "${targets[@]}"; do
    work="target/work-corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    dict=()
    [ -f "dict/$t.dict" ] && dict=("-dict=dict/$t.dict")
    log="target/fuzz-$t.log"
    result=ok
    if ! cargo +nightly fuzz run -O "${san[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=5 \
        -rss_limit_mb=512 -malloc_limit_mb=256 -print_final_stats=1 \
        "${dict[@]}" >"$log" 2>&1; then
        result="FAILED (see fuzz/$log, fuzz/artifacts/$t/)"
        failed=1
    fi
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    printf '%-14s %10s %14s %8s %s\n' "$t" "$(stat average_exec_per_sec)" \
        "$(stat number_of_executed_units)" "$(stat peak_rss_mb)" "$result"
done
exit "$failed"
