//! Range walks (`Store::range_page`) against a model: after random
//! applies, deletes, purges and changes of the tracked ranges, walking any
//! range page by page, with any page size, yields exactly the model's
//! entries of that range (key, version, tombstone), each once, in hash
//! order, and touches only them.

use std::collections::BTreeMap;

use kv_storage::{Options, RangeKey, Store, Version};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Apply a value (`true`) or a tombstone at this timestamp.
    Apply(u16, u64, bool),
    /// Purge tombstones below this timestamp.
    Purge(u64),
    /// Track these bounds (sorted, deduplicated by the test).
    Track(Vec<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u16..300, 1u64..50, any::<bool>()).prop_map(|(k, t, v)| Op::Apply(k, t, v)),
        1 => (0u64..50).prop_map(Op::Purge),
        1 => bounds().prop_map(Op::Track),
    ]
}

fn bounds() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        proptest::collection::vec(any::<u64>(), 1..12),
        // Extremes: a bound at the top or the bottom of the hash space.
        Just(vec![0, u64::MAX]),
        Just(vec![u64::MAX]),
    ]
}

fn key(k: u16) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// The model: key to (version, tombstone).
type Model = BTreeMap<Vec<u8>, (Version, bool)>;

fn run(store: &Store, model: &mut Model, bounds: &mut Vec<u64>, op: &Op) {
    match op {
        Op::Apply(k, ts, live) => {
            let key = key(*k);
            let version = Version::new(*ts, 1);
            let value = live.then_some(&b"v"[..]);
            let newer = model.get(&key).is_none_or(|(v, _)| *v < version);
            assert_eq!(store.apply(&key, value, version).expect("apply"), newer);
            if newer {
                model.insert(key, (version, !live));
            }
        }
        Op::Purge(before) => {
            store.purge_tombstones(*before);
            model.retain(|_, (v, dead)| !(*dead && v.timestamp < *before));
        }
        Op::Track(b) => {
            let mut b = b.clone();
            b.sort_unstable();
            b.dedup();
            store.track_ranges(&b);
            *bounds = b;
        }
    }
}

/// Walks range `r` with pages of `page` keys; checks every page.
fn walk(store: &Store, r: usize, page: usize, max_bytes: usize) -> Vec<RangeKey> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let p = store.range_page(r, from, u64::MAX, page, max_bytes);
        assert!(p.covered_to >= from);
        for e in &p.entries {
            assert!(e.position >= from && e.position <= p.covered_to);
        }
        if !p.entries.is_empty() {
            assert!(
                p.entries.len() <= page.max(1) + 1,
                "a page of {} entries for at most {page}",
                p.entries.len()
            );
        }
        out.extend(p.entries);
        match p.covered_to.checked_add(1) {
            Some(next) if p.covered_to != u64::MAX => from = next,
            _ => return out,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn pages_of_a_range_are_exactly_its_entries(
        ops in proptest::collection::vec(op(), 1..200),
        first in bounds(),
        page in 1usize..40,
        max_bytes in prop_oneof![Just(usize::MAX), 1usize..200],
        shards in prop_oneof![Just(1usize), Just(4), Just(64)],
    ) {
        let store = Store::open(Options::in_memory().shards(shards)).expect("store");
        let mut model = Model::new();
        let mut bounds = Vec::new();
        run(&store, &mut model, &mut bounds, &Op::Track(first));
        for op in &ops {
            run(&store, &mut model, &mut bounds, op);
        }
        let before = store.range_keys_read();
        let mut total = 0;
        for r in 0..bounds.len() {
            let got = walk(&store, r, page, max_bytes);
            let mut want: Vec<(u64, Vec<u8>, Version, bool)> = model
                .iter()
                .filter(|(k, _)| Store::range_of_key(&bounds, k) == r)
                .map(|(k, (v, t))| (Store::key_position(k), k.clone(), *v, *t))
                .collect();
            want.sort();
            let got: Vec<(u64, Vec<u8>, Version, bool)> = got
                .into_iter()
                .map(|e| (e.position, e.key, e.version, e.tombstone))
                .collect();
            prop_assert_eq!(&got, &want, "range {} of {:?}", r, bounds);
            total += want.len() as u64;
        }
        // Walking every range reads every entry once, and nothing else.
        prop_assert_eq!(store.range_keys_read() - before, total);
    }
}

#[test]
fn an_untracked_store_has_no_range_pages() {
    let store = Store::open(Options::in_memory()).expect("store");
    store.put(b"k", b"v").expect("write");
    let p = store.range_page(0, 0, u64::MAX, 10, usize::MAX);
    assert!(p.entries.is_empty());
    assert_eq!(p.covered_to, u64::MAX);
}

#[test]
fn a_page_reads_only_its_own_range() {
    let store = Store::open(Options::in_memory()).expect("store");
    let bounds: Vec<u64> = (1..64u64).map(|i| i << 58).collect();
    store.track_ranges(&bounds);
    for i in 0..10_000 {
        store.put(format!("k{i}").as_bytes(), b"v").expect("write");
    }
    let in_range_5 = (0..10_000)
        .filter(|i| Store::range_of_key(&bounds, format!("k{i}").as_bytes()) == 5)
        .count() as u64;
    let before = store.range_keys_read();
    let got = walk(&store, 5, 50, usize::MAX);
    assert_eq!(got.len() as u64, in_range_5);
    assert_eq!(store.range_keys_read() - before, in_range_5);
}
