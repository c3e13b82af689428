//! `Store::drop_ranges`: a replica forgetting the ranges it no longer owns
//! forgets exactly the entries of those ranges (values and tombstones),
//! leaves no tombstone, and the log does not bring them back on reopen.

use kv_storage::{Options, Store, Version};

fn key(k: u32) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

#[test]
fn dropped_ranges_are_gone_and_stay_gone_after_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        Store::open(Options::new(dir.path()).tombstone_grace(std::time::Duration::from_secs(3600)))
            .expect("open");
    // Recent versions (µs), so that no snapshot purges the tombstones.
    let base = store.now_ms() * 1000;
    for k in 0..400 {
        let value = (k % 5 != 0).then(|| b"v".to_vec());
        let applied = store
            .apply(
                &key(k),
                value.as_deref(),
                Version::new(base + u64::from(k), 1),
            )
            .expect("apply");
        assert!(applied);
    }
    // The lower half of the hash space, and a sliver at the top.
    let ranges = [(0, u64::MAX / 2), (u64::MAX - (1 << 60), u64::MAX)];
    let inside = |k: &[u8]| {
        let p = Store::key_position(k);
        ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi)
    };
    let doomed = (0..400).filter(|&k| inside(&key(k))).count();
    assert!(doomed > 100 && doomed < 350, "{doomed}");
    let dropped = store.drop_ranges(&ranges).expect("drop");
    assert_eq!(dropped, doomed);
    let check = |store: &Store| {
        for k in 0..400 {
            let got = store.get_versioned(&key(k));
            if inside(&key(k)) {
                assert!(got.is_none(), "key {k} dropped, yet {got:?}");
            } else if k % 5 != 0 {
                assert!(got.is_some(), "key {k} outside the ranges is gone");
            }
        }
    };
    check(&store);
    // No tombstone is left: an older version of a deleted key applies.
    let gone_tombstone = (0..400)
        .find(|&k| k % 5 == 0 && inside(&key(k)))
        .expect("one");
    let kept_tombstone = (0..400)
        .find(|&k| k % 5 == 0 && !inside(&key(k)))
        .expect("one");
    assert!(store
        .apply(
            &key(gone_tombstone),
            Some(b"old"),
            Version::new(base - 1000, 1)
        )
        .expect("apply"));
    assert!(!store
        .apply(
            &key(kept_tombstone),
            Some(b"old"),
            Version::new(base - 1000, 1)
        )
        .expect("apply"));
    assert!(store.drop_ranges(&ranges).expect("drop") == 1);
    // A later write to a dropped key is kept.
    assert!(store
        .apply(&key(1000), Some(b"new"), Version::new(base + 5000, 1))
        .expect("apply"));
    store.close().expect("close");
    let store =
        Store::open(Options::new(dir.path()).tombstone_grace(std::time::Duration::from_secs(3600)))
            .expect("reopen");
    check(&store);
    assert_eq!(store.get(&key(1000)).as_deref(), Some(&b"new"[..]));
    assert_eq!(
        store.drop_ranges(&ranges).expect("drop again"),
        usize::from(inside(&key(1000)))
    );
}

/// A range that comes back to this node while a cleanup is forgetting it
/// (the ranges shrink, under the lock the cleanup holds per shard, before
/// anything is written there again) keeps every write made after it came
/// back, in the shards cleaned before as in those cleaned after; and the
/// log brings back none of the old entries the cleanup forgot.
#[test]
fn a_range_given_back_during_the_drop_keeps_the_writes_made_since() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(Options::new(dir.path())).expect("open");
    let base = store.now_ms() * 1000;
    let keys = 2000;
    for k in 0..keys {
        let v = Version::new(base + u64::from(k), 1);
        assert!(store.apply(&key(k), Some(b"old"), v).expect("apply"));
    }
    let ranges = parking_lot::RwLock::new(vec![(0, u64::MAX)]);
    let calls = std::cell::Cell::new(0);
    let half = store.shard_count() / 2;
    assert!(half > 0);
    let dropped = store
        .drop_ranges_while(|| {
            calls.set(calls.get() + 1);
            if calls.get() == half + 1 {
                // Half the shards cleaned: the whole ring comes back, and
                // every key is written again under the new ring.
                ranges.write().clear();
                for k in 0..keys {
                    let v = Version::new(base + 10_000 + u64::from(k), 1);
                    assert!(store.apply(&key(k), Some(b"new"), v).expect("apply"));
                }
            }
            ranges.read()
        })
        .expect("drop");
    assert!(dropped > 0 && dropped < keys as usize, "{dropped}");
    let check = |store: &Store| {
        for k in 0..keys {
            assert_eq!(store.get(&key(k)), Some(b"new".to_vec()), "key {k}");
        }
    };
    check(&store);
    drop(store);
    check(&Store::open(Options::new(dir.path())).expect("reopen"));
}
