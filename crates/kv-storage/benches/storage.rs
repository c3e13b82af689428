//! Criterion benchmarks for kv-storage: `cargo bench -p kv-storage`.
//!
//! 16-byte keys, 100-byte values, a 1,000,000-key store. Each store figure
//! sits beside the same operation on a 64-way sharded
//! `parking_lot::RwLock<HashMap>` (the yardstick: the fastest a concurrent
//! in-memory map with no durability at all can be). Set `KV_BENCH_KEYS` to
//! use fewer keys for a quick run.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kv_storage::{Durability, Options, SnapshotTrigger, Store};
use parking_lot::RwLock;

fn keys() -> u64 {
    std::env::var("KV_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// `key0000000000042`: 16 bytes, built without allocating.
fn key(mut i: u64) -> [u8; 16] {
    let mut k = *b"key0000000000000";
    for slot in k[3..].iter_mut().rev() {
        *slot = b'0' + (i % 10) as u8;
        i /= 10;
    }
    k
}

const VALUE: [u8; 100] = [b'v'; 100];

/// A small, fast generator so that key choice costs little.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The yardstick: a sharded `RwLock<HashMap>` with xxh3 shard choice.
struct Yardstick {
    shards: Vec<RwLock<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Yardstick {
    fn new(n: u64) -> Self {
        let y = Yardstick {
            shards: (0..64).map(|_| RwLock::new(HashMap::new())).collect(),
        };
        for i in 0..n {
            y.put(&key(i), &VALUE);
        }
        y
    }
    fn shard(&self, k: &[u8]) -> &RwLock<HashMap<Vec<u8>, Vec<u8>>> {
        &self.shards[(xxhash_rust::xxh3::xxh3_64(k) >> 32) as usize & 63]
    }
    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.shard(k).read().get(k).cloned()
    }
    fn put(&self, k: &[u8], v: &[u8]) {
        self.shard(k).write().insert(k.to_vec(), v.to_vec());
    }
}

/// Runs `op` on `threads` threads for `iters` operations in all.
fn parallel<F>(threads: u64, iters: u64, op: F) -> Duration
where
    F: Fn(&mut Rng) + Send + Sync,
{
    let op = &op;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t + 1));
                for _ in 0..iters / threads {
                    op(&mut rng);
                }
            });
        }
    });
    start.elapsed()
}

/// A store holding keys `0..n`, loaded without fsyncs and then reopened
/// with the durability under test.
fn filled_store(dir: &std::path::Path, durability: Durability, n: u64) -> Store {
    let store = Store::open(Options::new(dir).durability(Durability::No)).expect("open");
    for i in 0..n {
        store.put(&key(i), &VALUE).expect("put");
    }
    store.close().expect("close");
    Store::open(Options::new(dir).durability(durability)).expect("reopen")
}

fn get(c: &mut Criterion) {
    let n = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), Durability::No, n);
    let yard = Yardstick::new(n);
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    for threads in [1u64, 2] {
        g.bench_function(BenchmarkId::new("kv-storage", threads), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |r| {
                    black_box(store.get(&key(r.next(n))));
                })
            })
        });
        g.bench_function(BenchmarkId::new("yardstick", threads), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |r| {
                    black_box(yard.get(&key(r.next(n))));
                })
            })
        });
    }
    g.finish();
}

fn put(c: &mut Criterion) {
    let n = keys();
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1));
    for (name, durability) in [
        ("everysec", Durability::EverySec),
        ("no", Durability::No),
        ("always", Durability::Always),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = filled_store(dir.path(), durability, n);
        for threads in [1u64, 2] {
            g.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, |r| {
                        store.put(&key(r.next(n)), &VALUE).expect("put");
                    })
                })
            });
        }
    }
    let yard = Yardstick::new(n);
    for threads in [1u64, 2] {
        g.bench_function(BenchmarkId::new("yardstick", threads), |b| {
            b.iter_custom(|iters| parallel(threads, iters, |r| yard.put(&key(r.next(n)), &VALUE)))
        });
    }
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(filled_store(dir.path(), Durability::Always, 10_000));
    let mut g = c.benchmark_group("always_group_commit");
    g.throughput(Throughput::Elements(1));
    for writers in [1u64, 8, 64] {
        g.bench_function(BenchmarkId::new("writers", writers), |b| {
            b.iter_custom(|iters| {
                let iters = iters.max(writers);
                parallel(writers, iters, |r| {
                    store.put(&key(r.next(1_000_000)), &VALUE).expect("put");
                })
            })
        });
    }
    g.finish();
}

fn recovery(c: &mut Criterion) {
    let n = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::new(dir.path()).snapshot_trigger(SnapshotTrigger::Manual);
    {
        let store = Store::open(opts.clone()).expect("open");
        for i in 0..n {
            store.put(&key(i), &VALUE).expect("put");
        }
        store.snapshot().expect("snapshot");
        let mut r = Rng(7);
        for _ in 0..n / 10 {
            store.put(&key(r.next(n)), &VALUE).expect("put");
        }
        store.close().expect("close");
    }
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.bench_function(
        BenchmarkId::new("open", format!("{n}keys+{}log", n / 10)),
        |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let store = Store::open(opts.clone()).expect("open");
                    spent += start.elapsed();
                    assert_eq!(store.len() as u64, n);
                    drop(store);
                }
                spent
            })
        },
    );
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = get, put, group_commit, recovery
}
criterion_main!(benches);
