//! Listings in (hash, key) order: a `SCAN` step or a `LIST` page costs
//! O(page), not O(store), and a walk returns every key present for its
//! whole length exactly once while other threads write and delete.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_storage::{Options, Store};
use proptest::prelude::*;

fn store_with(keys: impl IntoIterator<Item = String>) -> Store {
    let store = Store::open(Options::in_memory()).expect("open");
    for k in keys {
        store.put(k.as_bytes(), b"v").expect("put");
    }
    store
}

/// A whole `SCAN` walk, `count` keys a step.
fn scan_all(store: &Store, count: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let (keys, next) = store.scan_cursor(cursor, count);
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// A whole paged listing with `prefix`, `limit` keys a page.
fn list_all(store: &Store, prefix: &[u8], limit: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.list_page(prefix, after.as_deref(), limit);
        out.extend(page.entries.into_iter().map(|(k, _)| k));
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

fn in_hash_order(keys: &[Vec<u8>]) -> bool {
    keys.windows(2)
        .all(|w| (Store::key_position(&w[0]), &w[0]) < (Store::key_position(&w[1]), &w[1]))
}

#[test]
fn a_scan_step_examines_about_count_entries_not_the_store() {
    let store = store_with((0..50_000).map(|i| format!("key:{i}")));
    let before = store.list_entries_examined();
    let (keys, next) = store.scan_cursor(0, 10);
    let examined = store.list_entries_examined() - before;
    assert_eq!(keys.len(), 10);
    assert_ne!(next, 0);
    assert!(examined <= 10, "one step of 10 examined {examined} entries");
    let before = store.list_entries_examined();
    let (keys, _) = store.scan_cursor(next, 100);
    let examined = store.list_entries_examined() - before;
    assert_eq!(keys.len(), 100);
    assert!(
        examined <= 100,
        "one step of 100 examined {examined} entries"
    );
}

#[test]
fn a_list_page_examines_about_limit_entries_not_the_store() {
    let store = store_with((0..50_000).map(|i| format!("key:{i}")));
    let before = store.list_entries_examined();
    let page = store.list_page(b"", None, 25);
    let examined = store.list_entries_examined() - before;
    assert_eq!(page.entries.len(), 25);
    assert!(examined <= 25, "a page of 25 examined {examined} entries");
    assert_eq!(page.next.as_ref(), page.entries.last().map(|(k, _)| k));
    let second = store.list_page(b"", page.next.as_deref(), 25);
    let mut both: Vec<Vec<u8>> = page.entries.into_iter().map(|(k, _)| k).collect();
    both.extend(second.entries.into_iter().map(|(k, _)| k));
    assert!(in_hash_order(&both), "pages follow (hash, key) order");
}

#[test]
fn a_rare_prefix_gives_short_pages_that_still_reach_every_key() {
    let mut keys: Vec<String> = (0..20_000).map(|i| format!("common:{i}")).collect();
    keys.extend((0..5).map(|i| format!("rare:{i}")));
    let store = store_with(keys);
    let before = store.list_entries_examined();
    let page = store.list_page(b"rare:", None, 1);
    assert!(page.entries.len() <= 1);
    let examined = store.list_entries_examined() - before;
    assert!(examined <= 100, "a page of 1 examined {examined} entries");
    let mut got = list_all(&store, b"rare:", 1);
    assert!(in_hash_order(&got));
    got.sort();
    let want: Vec<Vec<u8>> = (0..5).map(|i| format!("rare:{i}").into_bytes()).collect();
    assert_eq!(got, want);
}

#[test]
fn deleted_keys_in_the_way_do_not_end_a_walk_early() {
    let store = store_with((0..3000).map(|i| format!("k{i}")));
    for i in 0..2990 {
        store.delete(format!("k{i}").as_bytes()).expect("delete");
    }
    let mut got = scan_all(&store, 1);
    got.sort();
    let mut want: Vec<Vec<u8>> = (2990..3000).map(|i| format!("k{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(got, want);
    let mut listed = list_all(&store, b"", 1);
    listed.sort();
    assert_eq!(listed, want);
}

/// Walks `store` with `SCAN` (or `LIST` pages) while another thread
/// writes and deletes churn keys and overwrites the stable ones; returns
/// how often each key came back.
fn walk_under_churn(store: &Arc<Store>, count: usize, list: bool) -> BTreeMap<Vec<u8>, u32> {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                store
                    .put(format!("churn{i}").as_bytes(), b"x")
                    .expect("put");
                store
                    .delete(format!("churn{}", i / 2).as_bytes())
                    .expect("delete");
                store
                    .put(format!("stable{}", i % 500).as_bytes(), b"w")
                    .expect("put");
                i += 1;
            }
        })
    };
    let keys = if list {
        list_all(store, b"", count)
    } else {
        scan_all(store, count)
    };
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let mut seen = BTreeMap::new();
    for k in keys {
        *seen.entry(k).or_insert(0) += 1;
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// SCAN's guarantee, under writes and deletes from another thread: a
    /// key present for the whole walk comes back exactly once; no key
    /// comes back twice.
    #[test]
    fn walks_return_every_stable_key_once_under_concurrent_writes(
        stable in 1usize..1500,
        count in 1usize..60,
        list in any::<bool>(),
    ) {
        let store = Arc::new(store_with((0..stable).map(|i| format!("stable{i}"))));
        let seen = walk_under_churn(&store, count, list);
        for i in 0..stable {
            let k = format!("stable{i}").into_bytes();
            prop_assert_eq!(seen.get(&k), Some(&1), "stable{}", i);
        }
        prop_assert!(seen.values().all(|&n| n == 1), "a key came back twice");
    }
}

#[test]
fn a_versioned_page_starts_at_a_hash_and_after_a_key_whichever_is_later() {
    let store = store_with((0..2000).map(|i| format!("k{i}")));
    let mut all: Vec<Vec<u8>> = (0..2000).map(|i| format!("k{i}").into_bytes()).collect();
    all.sort_by_key(|k| (Store::key_position(k), k.clone()));
    let keys = |p: kv_storage::ListPage<kv_storage::Versioned>| -> Vec<Vec<u8>> {
        p.entries.into_iter().map(|(k, _)| k).collect()
    };
    // From the hash of the 100th key: it and the 9 after it.
    let from = Store::key_position(&all[100]);
    let page = store.list_page_versioned(b"", from, None, 10);
    assert_eq!(keys(page), all[100..110]);
    // After the 500th key, from a smaller hash: `after` wins.
    let page = store.list_page_versioned(b"", from, Some(&all[500]), 10);
    assert_eq!(keys(page), all[501..511]);
    // After the 50th key but from the 300th key's hash: `from` wins.
    let from = Store::key_position(&all[300]);
    let page = store.list_page_versioned(b"", from, Some(&all[50]), 10);
    assert_eq!(keys(page), all[300..310]);
}

/// Waits up to `deadline` for `done`, polling.
fn wait_for(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// A key that the map keeps in shard `index`.
fn key_in_shard(store: &Store, index: usize) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| store.shard_of_key(k) == index)
        .expect("a key for every shard")
}

/// Issue 11 review: a walk takes one shard's lock at a time, so a walk
/// stalled on one busy shard does not stall writes to the others (a walk
/// that held every shard's read lock while it waited for the last one
/// queued writers of every shard behind it).
#[test]
fn a_walk_blocked_on_one_shard_lets_writes_to_the_others_through() {
    const SHARDS: usize = 4;
    let store = Arc::new(Store::open(Options::in_memory().shards(SHARDS)).expect("open"));
    for s in 0..SHARDS {
        store.put(&key_in_shard(&store, s), b"v").expect("put");
    }
    let other = key_in_shard(&store, 0);
    let hold = store.hold_shard(SHARDS - 1);
    let locks_before = store.list_shard_locks();
    let walker = {
        let store = store.clone();
        std::thread::spawn(move || store.scan_cursor(0, 1000).0.len())
    };
    let reached_last = wait_for(Duration::from_secs(20), || {
        store.list_shard_locks() - locks_before >= SHARDS as u64
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.put(&other, b"w").expect("put");
            let _ = tx.send(());
        })
    };
    let write_done = rx.recv_timeout(Duration::from_secs(10)).is_ok();
    drop(hold);
    writer.join().expect("writer");
    assert_eq!(walker.join().expect("walker"), SHARDS);
    assert!(reached_last, "the walk never asked for the last shard");
    assert!(
        write_done,
        "a write to shard 0 waited for a walk stalled on shard {}",
        SHARDS - 1
    );
}

/// Keys crowded into one shard and a narrow stretch of hashes (which
/// anyone who may write can find by trying keys) must not make a page
/// read ahead each other shard's positions over and over: a page reads
/// about what it examines, plus one read-ahead per shard.
#[test]
fn a_crowded_shard_does_not_make_a_page_read_every_shard_again_and_again() {
    const SHARDS: usize = 64;
    let store = Store::open(Options::in_memory().shards(SHARDS)).expect("open");
    let window = u64::MAX / 8;
    let (mut crowded, mut i) = (0, 0u64);
    while crowded < 20_000 {
        let key = format!("crowd-{i}");
        i += 1;
        if store.shard_of_key(key.as_bytes()) == 0 && Store::key_position(key.as_bytes()) < window {
            store.put(key.as_bytes(), b"v").expect("put");
            crowded += 1;
        }
    }
    for j in 0..200_000 {
        store
            .put(format!("spread-{j}").as_bytes(), b"v")
            .expect("put");
    }
    // A prefix no key has: the page examines its whole budget
    // (100 entries per key asked for) and returns nothing.
    let (read, examined) = (store.list_positions_read(), store.list_entries_examined());
    let page = store.list_page(b"no-such-prefix", None, 1000);
    assert!(page.entries.is_empty());
    assert!(
        page.next.is_some(),
        "the budget ends the page before the store does"
    );
    let read = store.list_positions_read() - read;
    let examined = store.list_entries_examined() - examined;
    assert_eq!(examined, 100_000, "the page examines its whole budget");
    let bound = 2 * examined + (SHARDS as u64) * 4096;
    assert!(
        read <= bound,
        "a page that examined {examined} entries read {read} positions (bound {bound})"
    );
}
