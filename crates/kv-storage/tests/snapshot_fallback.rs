//! Damaged snapshots: the store keeps a complete history (a good snapshot
//! and the log after it, plus a fallback for it) whatever single snapshot
//! file is damaged, and a snapshot known to be bad never counts as that
//! fallback.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kv_storage::{Options, SnapshotTrigger, Store};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn opts(dir: &Path) -> Options {
    Options::new(dir)
        .snapshot_trigger(SnapshotTrigger::Manual)
        .segment_bytes(4096)
}

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    v.sort();
    v
}

fn snapshot_named(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("snap-{id:020}.snap"))
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = fs::read(path).expect("read snapshot");
    let at = at % b.len();
    b[at] ^= 0x10;
    fs::write(path, b).expect("write snapshot");
}

fn put_range(store: &Store, model: &mut Model, from: u32, to: u32) {
    for i in from..to {
        let (k, v) = (format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
        store.put(&k, &v).expect("put");
        model.insert(k, v);
    }
}

fn contents(store: &Store) -> Model {
    store.scan_prefix(b"").into_iter().collect()
}

/// Bug 12: a snapshot rejected at recovery was still counted as the older
/// generation when the next snapshot deleted the log, so damage to that
/// next snapshot left nothing to recover from.
#[test]
fn a_rejected_snapshot_is_not_the_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    let store = Store::open(opts(dir.path())).expect("open");
    put_range(&store, &mut model, 0, 100);
    store.snapshot().expect("snapshot");
    put_range(&store, &mut model, 100, 250);
    store.close().expect("close");

    let snap2 = snapshot_named(dir.path(), 2);
    flip_byte(&snap2, 200);
    let store = Store::open(opts(dir.path())).expect("reopen without snap-2");
    assert_eq!(contents(&store), model);
    let report = store.recovery_report();
    assert_eq!(report.rejected_snapshots.len(), 1, "{report}");
    assert_eq!(
        report.set_aside,
        vec![dir.path().join("snap-00000000000000000002.snap.bad")]
    );
    assert!(report.to_string().contains("snap.bad"), "{report}");
    put_range(&store, &mut model, 250, 400);
    store.snapshot().expect("snapshot");
    store.close().expect("close");

    let newest = snapshots(dir.path()).pop().expect("a snapshot");
    flip_byte(&newest, 200);
    let store = Store::open(opts(dir.path())).expect("open after the second damage");
    assert_eq!(contents(&store), model);
}

/// One step of the history of a store.
#[derive(Clone, Debug)]
struct Round {
    writes: u32,
    snapshot: bool,
    reopen: bool,
    /// Damage one snapshot file: which one, and which byte.
    damage: Option<(proptest::sample::Index, usize)>,
}

fn round() -> impl Strategy<Value = Round> {
    (
        0u32..60,
        any::<bool>(),
        proptest::bool::weighted(0.3),
        proptest::option::weighted(0.4, (any::<proptest::sample::Index>(), 0usize..4096)),
    )
        .prop_map(|(writes, snapshot, reopen, damage)| Round {
            writes,
            snapshot,
            reopen,
            damage,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Damage one snapshot file at a time, each damage followed by writes
    /// and a snapshot before the next: the store always reopens with every
    /// write.
    #[test]
    fn independent_snapshot_damage_never_loses_history(rounds in proptest::collection::vec(round(), 1..12)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut model = Model::new();
        let mut next = 0;
        let mut store = Store::open(opts(dir.path())).expect("open");
        // A damage may only come once a snapshot was taken after the last
        // one: two damages with no snapshot between can hit both
        // generations, and then no complete history exists.
        let mut may_damage = true;
        for r in &rounds {
            put_range(&store, &mut model, next, next + r.writes);
            next += r.writes;
            if r.snapshot {
                store.snapshot().expect("snapshot");
                may_damage = true;
            }
            if let Some((which, at)) = r.damage.filter(|_| may_damage) {
                let snaps = snapshots(dir.path());
                if !snaps.is_empty() {
                    flip_byte(&snaps[which.index(snaps.len())], at);
                    may_damage = false;
                }
            }
            if r.reopen {
                store.close().expect("close");
                store = Store::open(opts(dir.path()))
                    .map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
                prop_assert_eq!(contents(&store), model.clone());
            }
        }
        store.close().expect("close");
        let store = Store::open(opts(dir.path()))
            .map_err(|e| TestCaseError::fail(format!("final open: {e}")))?;
        prop_assert_eq!(contents(&store), model);
    }
}
