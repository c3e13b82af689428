//! Criterion benchmarks for kv-storage: `cargo bench -p kv-storage`.
//!
//! 16-byte keys, 100-byte values, a 1,000,000-key store. Each store figure
//! sits beside the same operation on the yardstick (`common/yardstick.rs`:
//! a 64-way sharded `parking_lot::RwLock<hashbrown::HashTable>` with one
//! xxh3 hash per operation and key and value in one allocation, the fastest
//! a concurrent in-memory map with no durability at all can reasonably be).
//! Keys are built and shuffled before any clock starts; a timed operation is
//! the call itself. `get` returns a copy of the value, `get_with` lends it.
//! Set `KV_BENCH_KEYS` to use fewer keys for a quick run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kv_storage::{Durability, Options, SnapshotTrigger, Store};

#[path = "common/yardstick.rs"]
mod yardstick;
use yardstick::{key, Yardstick, VALUE};

fn keys() -> u64 {
    std::env::var("KV_BENCH_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// A small, fast generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Keys `0..n` in a random order, built before any clock starts: the timed
/// loops only step through this array.
fn shuffled_keys(n: u64) -> Vec<[u8; 16]> {
    let mut keys: Vec<[u8; 16]> = (0..n).map(key).collect();
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    for i in (1..keys.len()).rev() {
        keys.swap(i, r.next(i as u64 + 1) as usize);
    }
    keys
}

/// Runs `op` on `threads` threads for `iters` operations in all; thread `t`
/// walks `keys` from its own starting point, wrapping around.
fn parallel<F>(threads: u64, iters: u64, keys: &[[u8; 16]], op: F) -> Duration
where
    F: Fn(&[u8; 16]) + Send + Sync,
{
    let op = &op;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut i = (t as usize * keys.len()) / threads as usize;
                for _ in 0..iters / threads {
                    op(&keys[i]);
                    i += 1;
                    if i == keys.len() {
                        i = 0;
                    }
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

/// A yardstick holding keys `0..n`.
fn filled_yardstick(n: u64) -> Yardstick {
    let y = Yardstick::default();
    for i in 0..n {
        y.put(&key(i), &VALUE);
    }
    y
}

/// `get` copies the value out (`Store::get` returns a `Vec`); `get_with`
/// lends it to a closure that only looks at its length.
fn get(c: &mut Criterion) {
    let n = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(dir.path(), Durability::No, n);
    let yard = filled_yardstick(n);
    let ks = shuffled_keys(n);
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    for threads in [1u64, 2] {
        let run = |b: &mut criterion::Bencher, op: &(dyn Fn(&[u8; 16]) + Sync)| {
            b.iter_custom(|iters| parallel(threads, iters, &ks, op))
        };
        g.bench_function(BenchmarkId::new("kv-storage", threads), |b| {
            run(b, &|k| {
                black_box(store.get(k));
            })
        });
        g.bench_function(BenchmarkId::new("yardstick", threads), |b| {
            run(b, &|k| {
                black_box(yard.get(k));
            })
        });
        g.bench_function(BenchmarkId::new("kv-storage-get_with", threads), |b| {
            run(b, &|k| {
                black_box(store.get_with(k, |v| v.map(<[u8]>::len)));
            })
        });
        g.bench_function(BenchmarkId::new("yardstick-get_with", threads), |b| {
            run(b, &|k| {
                black_box(yard.get_with(k, |v| v.map(<[u8]>::len)));
            })
        });
    }
    g.finish();
}

fn put(c: &mut Criterion) {
    let n = keys();
    let ks = shuffled_keys(n);
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
                    parallel(threads, iters, &ks, |k| {
                        store.put(k, &VALUE).expect("put");
                    })
                })
            });
        }
    }
    let yard = filled_yardstick(n);
    for threads in [1u64, 2] {
        g.bench_function(BenchmarkId::new("yardstick", threads), |b| {
            b.iter_custom(|iters| parallel(threads, iters, &ks, |k| yard.put(k, &VALUE)))
        });
    }
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(filled_store(dir.path(), Durability::Always, 10_000));
    let ks = shuffled_keys(1_000_000);
    let mut g = c.benchmark_group("always_group_commit");
    g.throughput(Throughput::Elements(1));
    for writers in [1u64, 8, 64] {
        g.bench_function(BenchmarkId::new("writers", writers), |b| {
            b.iter_custom(|iters| {
                let iters = iters.max(writers);
                parallel(writers, iters, &ks, |k| {
                    store.put(k, &VALUE).expect("put");
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
