//! Model-based test: random operation sequences run against the store and a
//! `BTreeMap` must give identical results, across reopens and snapshots.
//! A failure prints a seed; proptest replays it from
//! `proptest-regressions/` or with `PROPTEST_RNG_SEED`.

use std::collections::BTreeMap;

use kv_storage::{Durability, Options, SnapshotTrigger, Store};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Scan(Vec<u8>),
    Page(Vec<u8>, Option<Vec<u8>>, usize),
    Reopen,
    Snapshot,
    Flush,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so that keys collide and prefixes match.
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 0..4)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        proptest::collection::vec(any::<u8>(), 200..1500),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Delete),
        3 => key().prop_map(Op::Get),
        1 => key().prop_map(Op::Scan),
        1 => (key(), proptest::option::of(key()), 0usize..5).prop_map(|(p, a, n)| Op::Page(p, a, n)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Flush),
    ]
}

fn trigger() -> impl Strategy<Value = SnapshotTrigger> {
    prop_oneof![
        Just(SnapshotTrigger::Manual),
        (1u64..20).prop_map(SnapshotTrigger::Operations),
        Just(SnapshotTrigger::LogGrowth {
            percent: 50,
            min_bytes: 2048
        }),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Always),
        Just(Durability::EverySec),
        Just(Durability::No)
    ]
}

fn model_page(
    m: &BTreeMap<Vec<u8>, Vec<u8>>,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a))
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn run(ops: Vec<Op>, opts: Options, can_reopen: bool) -> Result<(), TestCaseError> {
    let mut store = Store::open(opts.clone()).expect("open");
    let mut model = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                store.put(&k, &v).expect("put");
                model.insert(k, v);
            }
            Op::Delete(k) => {
                let existed = store.delete(&k).expect("delete");
                prop_assert_eq!(existed, model.remove(&k).is_some());
            }
            Op::Get(k) => prop_assert_eq!(store.get(&k), model.get(&k).cloned()),
            Op::Scan(p) => prop_assert_eq!(
                store.scan_prefix(&p),
                model_page(&model, &p, None, usize::MAX)
            ),
            Op::Page(p, a, n) => prop_assert_eq!(
                store.scan_page(&p, a.as_deref(), n),
                model_page(&model, &p, a.as_deref(), n)
            ),
            Op::Reopen if can_reopen => {
                store.close().expect("close");
                store = Store::open(opts.clone()).expect("reopen");
            }
            Op::Reopen => {}
            Op::Snapshot => store.snapshot().expect("snapshot"),
            Op::Flush => store.flush().expect("flush"),
        }
        prop_assert_eq!(store.len(), model.len());
    }
    let all = store.scan_prefix(b"");
    let expect: Vec<_> = model.into_iter().collect();
    prop_assert_eq!(all, expect);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn durable_store_matches_btreemap(
        ops in proptest::collection::vec(op(), 1..120),
        trigger in trigger(),
        durability in durability(),
        segment in prop_oneof![Just(4096u64), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options::new(dir.path())
            .durability(durability)
            .snapshot_trigger(trigger)
            .segment_bytes(segment)
            .shards(4);
        run(ops, opts, true)?;
    }

    #[test]
    fn in_memory_store_matches_btreemap(ops in proptest::collection::vec(op(), 1..200)) {
        run(ops, Options::in_memory(), false)?;
    }
}
