//! `Store::stream_page`: a resumable walk that sends every key present at
//! the start exactly once, whatever is written between pages; and
//! `Store::track_ranges`: range hashes kept up to date by every write equal
//! hashes computed afresh.

use std::collections::BTreeMap;

use kv_storage::{Options, Store, StreamCursor, Version};
use proptest::prelude::*;

fn store() -> Store {
    Store::open(Options::in_memory().shards(8)).expect("in-memory store")
}

proptest! {
    #[test]
    fn every_wanted_key_present_at_the_start_comes_once(
        keys in proptest::collection::btree_set(0u32..5000, 0..300),
        deleted in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        writes in proptest::collection::vec((0u32..10_000, any::<bool>()), 0..200),
        max_bytes in 1usize..3000,
    ) {
        let s = store();
        let keys: Vec<u32> = keys.into_iter().collect();
        for k in &keys {
            s.put(format!("k{k}").as_bytes(), &[7u8; 20]).expect("put");
        }
        if !keys.is_empty() {
            for d in deleted {
                s.delete(format!("k{}", keys[d.index(keys.len())]).as_bytes()).expect("delete");
            }
        }
        let want = |k: &[u8]| k.last().is_some_and(|b| b % 3 != 0);
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut cursor = Some(StreamCursor::default());
        let mut writes = writes.into_iter();
        let mut pages = 0;
        while let Some(c) = cursor {
            let (page, next) = s.stream_page(c, max_bytes, want);
            prop_assert!(!page.is_empty() || next.is_none(), "an empty page ends the walk");
            for (k, _) in page {
                prop_assert!(want(&k), "unwanted key {:?}", k);
                *seen.entry(k).or_default() += 1;
            }
            // Writes between pages: updates, deletes and new keys.
            for (k, del) in writes.by_ref().take(3) {
                let key = format!("k{k}");
                if del {
                    s.delete(key.as_bytes()).expect("delete");
                } else {
                    s.put(key.as_bytes(), b"new").expect("put");
                }
            }
            if let Some(n) = next {
                prop_assert!(n > c, "the cursor moves forward");
            }
            cursor = next;
            pages += 1;
            prop_assert!(pages < 100_000);
        }
        for k in &keys {
            let key = format!("k{k}").into_bytes();
            if want(&key) {
                prop_assert_eq!(seen.get(&key).copied(), Some(1), "key {:?}", key);
            }
        }
        prop_assert!(seen.values().all(|&n| n == 1));
    }

    #[test]
    fn range_hashes_kept_up_to_date_equal_fresh_ones(
        bounds in proptest::collection::btree_set(any::<u64>(), 0..20),
        ops in proptest::collection::vec((0u8..5, 0u32..60, 1u64..1000), 0..300),
    ) {
        let s = store();
        let bounds: Vec<u64> = bounds.into_iter().collect();
        s.track_ranges(&bounds);
        for (op, k, ts) in ops {
            let key = format!("k{k}");
            match op {
                0 => { s.put(key.as_bytes(), b"v").expect("put"); }
                1 => { s.delete(key.as_bytes()).expect("delete"); }
                2 => { s.apply(key.as_bytes(), Some(b"r"), Version::new(ts, 7)).expect("apply"); }
                3 => { s.apply(key.as_bytes(), None, Version::new(ts, 7)).expect("apply"); }
                _ => { s.purge_tombstones(ts); }
            }
        }
        let kept = s.range_hashes();
        let fresh = store();
        for (k, v) in s.iter_versioned() {
            fresh.apply(&k, v.value.as_deref(), v.version).expect("copy");
        }
        fresh.track_ranges(&bounds);
        prop_assert_eq!(kept.len(), bounds.len());
        prop_assert_eq!(kept, fresh.range_hashes());
    }
}
