#!/usr/bin/env bash
# Soak the deterministic simulator: 20,000 seeds (or $1) of the main faulty
# run, shared out over the four shard tests that the test harness runs in
# parallel (one per core, see --test-threads). CI runs 2,000.
#
#   benches/sim_soak.sh            # 20,000 seeds
#   benches/sim_soak.sh 50000      # more
#   JOINS=3000 benches/sim_soak.sh # also 3,000 seeds of joins and leaves
#
# Every failing seed is listed with the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-20000}
threads=${THREADS:-$(nproc)}
cargo build --release -p kv-replication --tests
start=$(date +%s)
KV_SIM_SEEDS=$seeds cargo test --release -p kv-replication --test sim \
    majority_quorums_hold_the_invariants_under_faults -- --test-threads="$threads" --nocapture
echo "sim soak: $seeds seeds of the main faulty run in $(( $(date +%s) - start )) s"
if [ -n "${JOINS:-}" ]; then
    start=$(date +%s)
    KV_SIM_SEEDS=$JOINS cargo test --release -p kv-replication --test sim \
        joins_and_leaves_during_a_faulty_run_keep_the_invariants -- --exact --nocapture
    echo "sim soak: $JOINS seeds of joins and leaves in $(( $(date +%s) - start )) s"
fi
