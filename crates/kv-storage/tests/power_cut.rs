//! Power cuts, through the simulated file system: random operation sequences
//! with the power cut at random points. After each cut the store must reopen
//! holding the writes of some prefix of the history, no shorter than what
//! was acknowledged as durable: under `always` every acknowledged write,
//! under `everysec` every write before the last completed periodic flush,
//! under `no` every write before the last explicit flush or close. Planted
//! bugs prove the check can fail.

use std::collections::BTreeMap;

use kv_storage::testing::{Crash, PlantedBug, SimFs};
use kv_storage::{Durability, Options, SnapshotTrigger, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const DIR: &str = "/data";

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    /// One round of the `everysec` flush, as if its interval passed.
    Tick,
    Flush,
    Snapshot,
    /// Clean close and reopen.
    Reopen,
    /// Power cut, then reopen.
    Cut(CutKind),
}

#[derive(Clone, Debug)]
enum CutKind {
    DropUnsynced,
    Torn(u64),
}

fn op(torn: bool) -> impl Strategy<Value = Op> {
    let cut = if torn {
        prop_oneof![
            Just(CutKind::DropUnsynced),
            any::<u64>().prop_map(CutKind::Torn)
        ]
        .boxed()
    } else {
        Just(CutKind::DropUnsynced).boxed()
    };
    prop_oneof![
        8 => (0u8..6, prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 300..700),
        ]).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..6).prop_map(Op::Delete),
        2 => Just(Op::Tick),
        1 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reopen),
        2 => cut.prop_map(Op::Cut),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Always),
        Just(Durability::EverySec),
        Just(Durability::No)
    ]
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// The writes made so far, and how many of them must survive a power cut.
struct History {
    writes: Vec<(u8, Option<Vec<u8>>)>,
    durable: usize,
}

impl History {
    fn model(&self, upto: usize) -> Model {
        let mut m = Model::new();
        for (k, v) in &self.writes[..upto] {
            match v {
                Some(v) => m.insert(vec![*k], v.clone()),
                None => m.remove(&vec![*k]),
            };
        }
        m
    }

    /// The longest prefix, at least the durable one, that `got` equals.
    fn matching_prefix(&self, got: &Model) -> Option<usize> {
        (self.durable..=self.writes.len())
            .rev()
            .find(|&p| self.model(p) == *got)
    }
}

fn options(fs: &SimFs, durability: Durability, planted: Option<PlantedBug>) -> Options {
    let opts = Options::new(DIR)
        .file_system(fs)
        .durability(durability)
        .segment_bytes(4096)
        .snapshot_trigger(SnapshotTrigger::Manual)
        // The periodic flush runs only when the test says a second passed.
        .fsync_interval(std::time::Duration::from_secs(3600));
    match planted {
        Some(bug) => opts.planted_bug(bug),
        None => opts,
    }
}

fn contents(store: &Store) -> Model {
    store.scan_prefix(b"").into_iter().collect()
}

/// Runs `ops` and checks every reopen; returns the first violation.
fn check(ops: &[Op], durability: Durability, planted: Option<PlantedBug>) -> Result<(), String> {
    let mut fs = SimFs::new();
    let open = |fs: &SimFs| Store::open(options(fs, durability, planted));
    let mut store = open(&fs).map_err(|e| format!("first open: {e}"))?;
    let mut h = History {
        writes: Vec::new(),
        durable: 0,
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put(k, v) => {
                store
                    .put(&[*k], v)
                    .map_err(|e| format!("op {i}: put: {e}"))?;
                h.writes.push((*k, Some(v.clone())));
            }
            Op::Delete(k) => {
                store
                    .delete(&[*k])
                    .map_err(|e| format!("op {i}: delete: {e}"))?;
                h.writes.push((*k, None));
            }
            Op::Tick => {
                store
                    .fsync_tick()
                    .map_err(|e| format!("op {i}: tick: {e}"))?;
                if durability == Durability::EverySec {
                    h.durable = h.writes.len();
                }
            }
            Op::Flush => {
                store.flush().map_err(|e| format!("op {i}: flush: {e}"))?;
                h.durable = h.writes.len();
            }
            Op::Snapshot => store
                .snapshot()
                .map_err(|e| format!("op {i}: snapshot: {e}"))?,
            Op::Reopen => {
                store.close().map_err(|e| format!("op {i}: close: {e}"))?;
                h.durable = h.writes.len();
                store = open(&fs).map_err(|e| format!("op {i}: reopen: {e}"))?;
            }
            Op::Cut(kind) => {
                let crashed = fs.crash(&match kind {
                    CutKind::DropUnsynced => Crash::DropUnsynced,
                    CutKind::Torn(seed) => Crash::Torn(*seed),
                });
                drop(store);
                fs = crashed;
                store = open(&fs).map_err(|e| format!("op {i}: open after power cut: {e}"))?;
                let got = contents(&store);
                let Some(p) = h.matching_prefix(&got) else {
                    return Err(format!(
                        "op {i}: after the power cut the store holds {got:?}, which is no \
                         state between the {} durable writes and all {} writes",
                        h.durable,
                        h.writes.len()
                    ));
                };
                h.writes.truncate(p);
                h.durable = p;
            }
        }
        if durability == Durability::Always {
            h.durable = h.writes.len();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Power cuts that drop every unsynced byte.
    #[test]
    fn power_cut_keeps_every_durable_write(
        durability in durability(),
        ops in proptest::collection::vec(op(false), 1..60),
    ) {
        check(&ops, durability, None).map_err(TestCaseError::fail)?;
    }

    /// Power cuts that tear the unsynced bytes at sector boundaries.
    #[test]
    fn torn_power_cut_keeps_every_durable_write(
        durability in durability(),
        ops in proptest::collection::vec(op(true), 1..60),
    ) {
        check(&ops, durability, None).map_err(TestCaseError::fail)?;
    }
}

/// Runs the random check with a planted bug; returns the violation found.
fn find_violation(durability: Durability, bug: PlantedBug) -> Option<String> {
    let config = Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = proptest::collection::vec(op(false), 1..60);
    match runner.run(&strategy, |ops| {
        check(&ops, durability, Some(bug)).map_err(TestCaseError::fail)
    }) {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

#[test]
fn planted_no_fsync_under_always_is_caught() {
    let found = find_violation(Durability::Always, PlantedBug::NoFsyncAlways);
    assert!(
        found.is_some(),
        "the power-cut check missed a store that never fsyncs"
    );
}

#[test]
fn planted_no_fsync_under_everysec_is_caught() {
    let found = find_violation(Durability::EverySec, PlantedBug::NoFsyncEverySec);
    assert!(
        found.is_some(),
        "the power-cut check missed an everysec flush that syncs nothing"
    );
}

#[test]
fn planted_skipped_directory_fsync_is_caught() {
    let found = find_violation(Durability::Always, PlantedBug::SkipDirSync);
    assert!(
        found.is_some(),
        "the power-cut check missed skipped directory fsyncs"
    );
}

/// The same planted bugs, in the smallest history that shows each.
#[test]
fn planted_bugs_fail_the_check_on_a_minimal_history() {
    let put = Op::Put(1, b"v".to_vec());
    let cut = Op::Cut(CutKind::DropUnsynced);
    let cases = [
        (
            Durability::Always,
            PlantedBug::NoFsyncAlways,
            vec![put.clone(), cut.clone()],
        ),
        (
            Durability::EverySec,
            PlantedBug::NoFsyncEverySec,
            vec![put.clone(), Op::Tick, cut.clone()],
        ),
        (
            Durability::Always,
            PlantedBug::SkipDirSync,
            vec![put.clone(), cut.clone()],
        ),
    ];
    for (durability, bug, ops) in cases {
        assert!(
            check(&ops, durability, None).is_ok(),
            "{ops:?} fails without a bug"
        );
        let err = check(&ops, durability, Some(bug)).expect_err("planted bug not caught");
        assert!(err.contains("after the power cut"), "{bug:?}: {err}");
    }
}

/// A failed fsync poisons the store: the write fails, and so does every
/// later one, since the kernel may have dropped the dirty pages.
#[test]
fn failed_fsync_refuses_further_writes() {
    let fs = SimFs::new();
    let store = Store::open(options(&fs, Durability::Always, None)).expect("open");
    store.put(b"a", b"1").expect("put");
    fs.set_fail_sync(true);
    assert!(
        store.put(b"b", b"2").is_err(),
        "a write whose fsync failed was acknowledged"
    );
    fs.set_fail_sync(false);
    let err = store
        .put(b"c", b"3")
        .expect_err("write after a failed fsync");
    assert!(err.to_string().contains("read-only"), "{err}");
}
