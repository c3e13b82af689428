#!/usr/bin/env bash
# A long fault-injection run on real kv-server processes (CI runs 90 s):
# three nodes on 127.0.0.2-4 in a private network namespace, clients on hot
# keys, and a nemesis that kills -9 and restarts, pauses, isolates a node
# and cuts single links. The history is checked at the end, and here (not
# in CI) a linearizability violation under faults fails the run too.
#
#   benches/faults_soak.sh             # 600 s
#   benches/faults_soak.sh 3600        # an hour
#   KV_FAULTS_SEED=123 benches/faults_soak.sh   # replay a nemesis schedule
#
# Needs `unshare` (util-linux), user and network namespaces, and `nft`
# (apt-get install nftables); it fails rather than skips without them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
cargo build --release -p kv-server --tests
start=$(date +%s)
KV_FAULTS_LINEARIZABLE=1 KV_FAULTS_REQUIRE=1 KV_FAULTS_SECS=$secs cargo test --release -p kv-server --test faults \
    strict_quorums_survive_kills_pauses_isolation_and_cut_links -- --exact --nocapture
echo "faults soak: $secs s of faults, $(( $(date +%s) - start )) s in all"
