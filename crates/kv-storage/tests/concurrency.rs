//! Many threads writing and reading disjoint and overlapping keys, with
//! snapshots running underneath; then reopen and compare.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use kv_storage::{Change, Durability, Options, SnapshotTrigger, Store};

const THREADS: usize = 8;
const OPS: usize = 4000;

fn run(durability: Durability) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::new(dir.path())
        .durability(durability)
        .segment_bytes(64 << 10)
        .snapshot_trigger(SnapshotTrigger::Operations(2500));
    let store = Arc::new(Store::open(opts.clone()).expect("open"));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = BTreeMap::new();
                for i in 0..OPS {
                    // Disjoint: only this thread writes "t{t}-*".
                    let key = format!("t{t}-{}", i % 500).into_bytes();
                    if i % 7 == 3 {
                        store.delete(&key).expect("delete");
                        mine.remove(&key);
                    } else {
                        let value = format!("{t}:{i}").into_bytes();
                        store.put(&key, &value).expect("put");
                        mine.insert(key.clone(), value);
                    }
                    // What this thread wrote last is what it reads back.
                    assert_eq!(store.get(&key), mine.get(&key).cloned());
                    // Overlapping: every thread writes "shared-*".
                    let shared = format!("shared-{}", i % 50).into_bytes();
                    store
                        .put(&shared, format!("{t}:{i}").as_bytes())
                        .expect("put");
                    let seen = store.get(&shared).expect("shared key present");
                    assert!(seen.contains(&b':'), "torn value {seen:?}");
                }
                mine
            })
        })
        .collect();
    let mut expected = BTreeMap::new();
    for h in handles {
        expected.extend(h.join().expect("writer thread"));
    }
    let before: BTreeMap<_, _> = store.scan_prefix(b"").into_iter().collect();
    for (k, v) in &expected {
        assert_eq!(before.get(k), Some(v), "key {}", String::from_utf8_lossy(k));
    }
    let own: usize = before.keys().filter(|k| k.starts_with(b"t")).count();
    assert_eq!(own, expected.len(), "deleted keys stay deleted");
    for i in 0..50 {
        let v = &before[format!("shared-{i}").as_bytes()];
        let text = String::from_utf8_lossy(v);
        let (t, n) = text.split_once(':').expect("value format");
        assert!(t.parse::<usize>().expect("thread") < THREADS);
        assert_eq!(n.parse::<usize>().expect("op") % 50, i);
    }
    let versions_before: BTreeMap<_, _> = store.iter_versioned().collect();
    drop(store);

    let store = Store::open(opts).expect("reopen");
    let after: BTreeMap<_, _> = store.scan_prefix(b"").into_iter().collect();
    assert_eq!(after, before);
    // Versions survive too (tombstones may have been purged by snapshots).
    for (k, v) in store.iter_versioned() {
        if let Some(old) = versions_before.get(&k) {
            assert_eq!(&v, old);
        }
    }
}

#[test]
fn concurrent_writers_everysec() {
    run(Durability::EverySec);
}

#[test]
fn concurrent_writers_always_group_commit() {
    run(Durability::Always);
}

#[test]
fn versioned_apply_keeps_the_newest_whatever_the_order() {
    use kv_storage::Version;
    let store = Arc::new(Store::open(Options::in_memory()).expect("open"));
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for ts in (0..1000u64).rev() {
                    let v = Version::new(ts * 4 + u64::from(t), t);
                    let value = (ts % 3 != 0).then(|| v.to_string().into_bytes());
                    store.apply(b"k", value.as_deref(), v).expect("apply");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    let newest = Version::new(999 * 4 + 3, 3);
    let got = store.get_versioned(b"k").expect("present");
    assert_eq!(got.version, newest);
    assert!(!store
        .apply(b"k", Some(b"old"), Version::new(5, 0))
        .expect("apply"));
}

#[test]
fn scan_cursor_returns_every_stable_key_once_despite_writes() {
    let store = Store::open(Options::in_memory()).expect("open");
    for i in 0..1000u32 {
        store
            .put(format!("stable{i}").as_bytes(), b"v")
            .expect("put");
    }
    let mut seen = std::collections::BTreeMap::new();
    let mut cursor = 0;
    let mut step = 0u32;
    loop {
        let (keys, next) = store.scan_cursor(cursor, 37);
        for k in keys {
            *seen.entry(k).or_insert(0) += 1;
        }
        // Churn while the walk goes on.
        store
            .put(format!("churn{step}").as_bytes(), b"x")
            .expect("put");
        store
            .delete(format!("churn{}", step / 2).as_bytes())
            .expect("delete");
        step += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for i in 0..1000u32 {
        assert_eq!(
            seen.get(format!("stable{i}").as_bytes()),
            Some(&1),
            "stable{i}"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "no key twice");
    let live = store.len();
    assert_eq!(store.delete_all().expect("delete all") as usize, live);
    assert!(store.is_empty());
}

/// Threads incrementing one counter with `Store::update` under
/// `Durability::Always` (each waits for its fsync outside the shard lock)
/// lose no increment, and every one survives a reopen.
#[test]
fn concurrent_updates_lose_no_increment() {
    const PER_THREAD: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options::new(dir.path()).durability(Durability::Always);
    let store = Arc::new(Store::open(opts.clone()).expect("open"));
    let barrier = Arc::new(Barrier::new(THREADS));
    let incr = |cur: Option<kv_storage::Live<'_>>| {
        let n: u64 = cur.map_or(0, |c| {
            let text = std::str::from_utf8(c.value).expect("utf-8");
            text.parse().expect("a number")
        });
        (Change::put((n + 1).to_string().into_bytes(), None), n + 1)
    };
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let seen: Vec<u64> = (0..PER_THREAD)
                    .map(|_| store.update(b"counter", incr).expect("update"))
                    .collect();
                // Each thread sees its own increments in order.
                assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
                seen
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    all.sort_unstable();
    let total = THREADS as u64 * PER_THREAD;
    // Every increment answered a different number: none was lost.
    assert_eq!(all, (1..=total).collect::<Vec<u64>>());
    let want = total.to_string().into_bytes();
    assert_eq!(store.get(b"counter"), Some(want.clone()));
    drop(store);
    let store = Store::open(opts).expect("reopen");
    assert_eq!(store.get(b"counter"), Some(want));
}
