//! Crash recovery: logs cut at arbitrary offsets, flipped bits, and damaged,
//! missing or misplaced files. Recovery keeps exactly the records wholly
//! before the damage, reports damage in the middle, and never panics or
//! returns a corrupted value.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kv_storage::{Error, Options, RecoveryMode, SnapshotTrigger, Store};
use proptest::prelude::*;

const SEGMENT_HEADER: u64 = 64;
/// Where the synced mark starts in a segment header.
const MARK_START: u64 = 32;
const RECORD_OVERHEAD: u64 = 12 + 17;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// One write of a test run: `None` is a delete.
#[derive(Clone, Debug)]
struct Write {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

fn write_strategy() -> impl Strategy<Value = Write> {
    (
        0u8..12,
        proptest::option::weighted(0.85, proptest::collection::vec(any::<u8>(), 0..80)),
    )
        .prop_map(|(k, value)| Write {
            key: format!("key{k}").into_bytes(),
            value,
        })
}

fn opts(dir: &Path) -> Options {
    Options::new(dir)
        .snapshot_trigger(SnapshotTrigger::Manual)
        .segment_bytes(1 << 20)
}

/// Applies writes to the store and returns the encoded size of each record
/// it logged (deletes of absent keys log nothing: size 0).
fn apply(store: &Store, model: &mut Model, writes: &[Write]) -> Vec<u64> {
    writes
        .iter()
        .map(|w| match &w.value {
            Some(v) => {
                store.put(&w.key, v).expect("put");
                model.insert(w.key.clone(), v.clone());
                RECORD_OVERHEAD + (w.key.len() + v.len()) as u64
            }
            None => {
                let logged = store.delete(&w.key).expect("delete");
                model.remove(&w.key);
                if logged {
                    RECORD_OVERHEAD + w.key.len() as u64
                } else {
                    0
                }
            }
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
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

fn contents(store: &Store) -> Model {
    store.scan_prefix(b"").into_iter().collect()
}

/// The model after replaying only the first `n` logged writes of `writes`
/// on top of `base`.
fn model_after(base: &Model, writes: &[Write], sizes: &[u64], records: usize) -> Model {
    let mut m = base.clone();
    let mut seen = 0;
    for (w, size) in writes.iter().zip(sizes) {
        if *size == 0 {
            continue;
        }
        if seen == records {
            break;
        }
        seen += 1;
        match &w.value {
            Some(v) => m.insert(w.key.clone(), v.clone()),
            None => m.remove(&w.key),
        };
    }
    m
}

/// Byte ranges of the logged records in the newest segment.
fn record_ranges(sizes: &[u64]) -> Vec<(u64, u64)> {
    let mut at = SEGMENT_HEADER;
    sizes
        .iter()
        .filter(|s| **s > 0)
        .map(|s| {
            let r = (at, at + s);
            at += s;
            r
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Cut the newest segment anywhere: exactly the records wholly before
    /// the cut survive, plus everything the snapshot holds.
    #[test]
    fn cut_newest_segment_at_any_offset(
        before in proptest::collection::vec(write_strategy(), 0..20),
        after in proptest::collection::vec(write_strategy(), 0..40),
        snapshot in any::<bool>(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut base = Model::new();
        let store = Store::open(opts(dir.path())).expect("open");
        if snapshot {
            apply(&store, &mut base, &before);
            store.snapshot().expect("snapshot");
        }
        let mut full = base.clone();
        let sizes = apply(&store, &mut full, &after);
        store.close().expect("close");

        let ranges = record_ranges(&sizes);
        let used = ranges.last().map_or(SEGMENT_HEADER, |r| r.1);
        let newest = segments(dir.path()).pop().expect("a segment");
        let cut = cut.index(used as usize + 1) as u64;
        let f = fs::OpenOptions::new().write(true).open(&newest).expect("open segment");
        f.set_len(cut).expect("cut");
        drop(f);

        let store = Store::open(opts(dir.path())).expect("reopen after cut");
        let whole = ranges.iter().filter(|r| r.1 <= cut).count();
        prop_assert_eq!(contents(&store), model_after(&base, &after, &sizes, whole));
        // Nothing more is lost on the next reopen.
        drop(store);
        let store = Store::open(opts(dir.path())).expect("second reopen");
        prop_assert_eq!(contents(&store), model_after(&base, &after, &sizes, whole));
    }

    /// Flip one bit anywhere in the written part of the log: damage in the
    /// last record is a torn tail; anywhere else it is reported with its
    /// offset, and the lenient mode keeps exactly the records before it.
    #[test]
    fn bit_flip_stops_at_or_reports_the_record(
        writes in proptest::collection::vec(write_strategy(), 1..40),
        bit in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(opts(dir.path())).expect("open");
        let mut full = Model::new();
        let sizes = apply(&store, &mut full, &writes);
        store.close().expect("close");
        let ranges = record_ranges(&sizes);
        prop_assume!(!ranges.is_empty());
        let used = ranges.last().map_or(SEGMENT_HEADER, |r| r.1);
        let seg = segments(dir.path()).pop().expect("a segment");
        let mut bytes = fs::read(&seg).expect("read");
        let bit = bit.index(used as usize * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        fs::write(&seg, &bytes).expect("write");

        let byte = (bit / 8) as u64;
        // Index of the damaged unit: records before it survive.
        let (damaged, start) = match ranges.iter().position(|r| r.0 <= byte && byte < r.1) {
            Some(i) => (i, ranges[i].0),
            // Bytes 32..64 of the header hold the advisory synced mark
            // (with its own checksum) and reserved space: damage there
            // loses nothing.
            None if (MARK_START..SEGMENT_HEADER).contains(&byte) => (ranges.len(), SEGMENT_HEADER),
            None => (0, 0), // the segment header proper
        };
        let expect = model_after(&Model::new(), &writes, &sizes, damaged);
        let is_last = damaged + 1 >= ranges.len() && start != 0;
        match Store::open(opts(dir.path())) {
            Ok(store) => {
                prop_assert!(is_last, "damage at record {} of {} was not reported", damaged, ranges.len());
                prop_assert_eq!(contents(&store), expect.clone());
            }
            Err(Error::CorruptLog { file, offset, .. }) => {
                prop_assert!(!is_last || start == 0);
                prop_assert_eq!(file, seg.clone());
                prop_assert_eq!(offset, start);
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error: {e}"))),
        }
        let store = Store::open(opts(dir.path()).recovery_mode(RecoveryMode::TruncateAtCorruption))
            .expect("lenient open");
        prop_assert_eq!(contents(&store), expect);
    }

    /// Any damage to any one file of a store whose every write is covered
    /// by its newest snapshot: the store keeps a fallback for each file
    /// (the previous snapshot generation and its log, or the whole log), so
    /// it must open in both modes and hold exactly the last acknowledged
    /// value of every key. The one damage it may refuse is a directory in
    /// place of the segment it would replay, naming that path; it never
    /// panics.
    #[test]
    fn damaged_files_never_panic_or_corrupt(
        rounds in proptest::collection::vec(proptest::collection::vec(write_strategy(), 1..30), 1..4),
        victim in any::<proptest::sample::Index>(),
        damage in 0u8..6,
        at in any::<proptest::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(opts(dir.path())).expect("open");
        let mut model = Model::new();
        for round in &rounds {
            apply(&store, &mut model, round);
            store.snapshot().expect("snapshot");
        }
        store.close().expect("close");
        let mut files = segments(dir.path());
        let newest_segment = files.last().cloned().expect("a segment");
        files.extend(snapshots(dir.path()));
        let victim = &files[victim.index(files.len())];
        let len = fs::metadata(victim).expect("stat").len() as usize;
        match damage {
            0 => fs::write(victim, b"").expect("empty"),
            1 => {
                fs::OpenOptions::new().write(true).open(victim).expect("open")
                    .set_len(at.index(len + 1) as u64).expect("truncate");
            }
            2 => {
                let mut b = fs::read(victim).expect("read");
                if !b.is_empty() {
                    let bit = at.index(b.len() * 8);
                    b[bit / 8] ^= 1 << (bit % 8);
                }
                fs::write(victim, b).expect("write");
            }
            3 => fs::remove_file(victim).expect("remove"),
            4 => {
                fs::remove_file(victim).expect("remove");
                fs::create_dir(victim).expect("mkdir");
            }
            _ => fs::write(victim, vec![0xA5; len.max(1)]).expect("garbage"),
        }
        let may_refuse = damage == 4 && *victim == newest_segment;
        for mode in [RecoveryMode::Strict, RecoveryMode::TruncateAtCorruption] {
            match Store::open(opts(dir.path()).recovery_mode(mode)) {
                Ok(store) => prop_assert_eq!(contents(&store), model.clone(), "{:?}", mode),
                Err(Error::Io { path, .. }) if may_refuse => prop_assert_eq!(&path, victim),
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{mode:?} open failed after damage {damage} to {}: {e}",
                        victim.display()
                    )))
                }
            }
        }
    }
}

#[test]
fn newest_snapshot_damaged_falls_back_to_older() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(opts(dir.path())).expect("open");
    store.put(b"a", b"1").expect("put");
    store.snapshot().expect("snapshot 1");
    store.put(b"b", b"2").expect("put");
    store.snapshot().expect("snapshot 2");
    store.put(b"c", b"3").expect("put");
    store.close().expect("close");
    let snaps = snapshots(dir.path());
    assert_eq!(snaps.len(), 2, "two snapshot generations are kept");
    let newest = snaps.last().expect("snapshot");
    let mut b = fs::read(newest).expect("read");
    let mid = b.len() - 3;
    b[mid] ^= 0x40;
    fs::write(newest, b).expect("write");

    let store = Store::open(opts(dir.path())).expect("open falls back");
    let report = store.recovery_report();
    assert_eq!(report.rejected_snapshots.len(), 1, "{report}");
    assert_eq!(report.snapshot.as_ref(), Some(&snaps[0]));
    assert_eq!(
        contents(&store),
        Model::from([
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
            (b"c".to_vec(), b"3".to_vec())
        ])
    );
}

#[test]
fn snapshots_delete_the_log_they_cover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(opts(dir.path()).segment_bytes(4096)).expect("open");
    for round in 0..4u32 {
        for i in 0..200u32 {
            store
                .put(format!("k{i}").as_bytes(), &round.to_le_bytes())
                .expect("put");
        }
        store.snapshot().expect("snapshot");
    }
    let snaps = snapshots(dir.path());
    assert_eq!(snaps.len(), 2);
    let oldest_kept = snaps[0].file_name().expect("name").to_string_lossy()[5..25].to_string();
    for seg in segments(dir.path()) {
        let id = &seg.file_name().expect("name").to_string_lossy()[4..24];
        assert!(
            id >= oldest_kept.as_str(),
            "segment {id} should have been deleted"
        );
    }
    drop(store);
    let store = Store::open(opts(dir.path())).expect("reopen");
    assert_eq!(store.len(), 200);
    assert_eq!(store.get(b"k7"), Some(3u32.to_le_bytes().to_vec()));
}

#[test]
fn data_dir_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let err = Store::open(opts(&missing).create_if_missing(false)).expect_err("missing dir");
    assert!(err.to_string().contains("missing"), "{err}");

    let file = dir.path().join("file");
    fs::write(&file, b"x").expect("write");
    let err = Store::open(opts(&file)).expect_err("file as dir");
    assert!(matches!(err, Error::NotADirectory(_)), "{err}");

    let data = dir.path().join("data");
    let _first = Store::open(opts(&data)).expect("open");
    let err = Store::open(opts(&data)).expect_err("second opener");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn middle_corruption_names_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(opts(dir.path())).expect("open");
    for i in 0..10u8 {
        store.put(&[b'k', i], &[i; 20]).expect("put");
    }
    store.close().expect("close");
    let seg = segments(dir.path()).pop().expect("segment");
    let mut b = fs::read(&seg).expect("read");
    let record = RECORD_OVERHEAD + 2 + 20;
    let third = SEGMENT_HEADER + 2 * record;
    b[third as usize + 20] ^= 1;
    fs::write(&seg, b).expect("write");
    let err = Store::open(opts(dir.path())).expect_err("corrupt");
    let msg = err.to_string();
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {third}")), "{msg}");
    let store = Store::open(opts(dir.path()).recovery_mode(RecoveryMode::TruncateAtCorruption))
        .expect("lenient");
    assert_eq!(store.len(), 2);
    let t = &store.recovery_report().truncations[0];
    assert!(t.corruption);
    assert_eq!(t.offset, third);
}
