//! Which seeds a test runs: the defaults, `KV_SIM_SEEDS=N` (seeds
//! 1..=N) and `KV_SIM_SEED=S` (one seed, replayed), and the command that
//! replays one.

/// Tests the main faulty run is split into.
pub const SHARDS: u64 = 4;

/// Seeds of the main faulty run, in all, unless `KV_SIM_SEEDS` says.
pub const MAIN_SEEDS: u64 = 2000;

/// The number in environment variable `name`, if it holds one.
pub fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Seeds 1..=`default` (or `KV_SIM_SEEDS`), or only `KV_SIM_SEED`.
pub fn seeds_up_to(default: u64) -> Vec<u64> {
    if let Some(s) = env("KV_SIM_SEED") {
        return vec![s];
    }
    (1..=env("KV_SIM_SEEDS").unwrap_or(default)).collect()
}

/// Seeds for the planted-bug searches and the rebalancing runs.
pub fn seeds() -> Vec<u64> {
    seeds_up_to(500)
}

/// [`seeds`] above `first` (all of them when replaying one seed): a
/// planted-bug search that starts near the first seed known to show it.
pub fn seeds_after(first: u64) -> Vec<u64> {
    seeds()
        .into_iter()
        .filter(|&s| s > first || env("KV_SIM_SEED").is_some())
        .collect()
}

/// Seeds `first..=last` (the one replayed with `KV_SIM_SEED`): a
/// planted-bug search pinned beyond the usual seeds.
pub fn seeds_in(first: u64, last: u64) -> Vec<u64> {
    if let Some(s) = env("KV_SIM_SEED") {
        return vec![s];
    }
    (first..=last).collect()
}

/// Shard `k`'s part of the main run's seeds.
pub fn shard_seeds(k: u64) -> Vec<u64> {
    if env("KV_SIM_SEED").is_some() {
        return seeds_up_to(0);
    }
    seeds_up_to(MAIN_SEEDS)
        .into_iter()
        .filter(|s| (s - 1) % SHARDS == k)
        .collect()
}

/// The command that replays test `test` with `seed` alone.
pub fn replay(test: &str, seed: u64) -> String {
    format!(
        "KV_SIM_SEED={seed} cargo test --release -p kv-replication --test sim {test} -- --exact"
    )
}
