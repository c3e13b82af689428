//! Crash sequences: a store opened, written, rotated, closed and damaged
//! several times in a row. Every open must either succeed with every
//! acknowledged write that no damage touched, or (only for damage in the
//! middle of the log under strict recovery) report corruption. An open must
//! never fail because of something the store itself did at an earlier open
//! (such as deleting segments when it truncated a torn tail).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kv_storage::{Error, Options, RecoveryMode, SnapshotTrigger, Store};
use proptest::prelude::*;

fn opts(dir: &Path) -> Options {
    Options::new(dir)
        .snapshot_trigger(SnapshotTrigger::Manual)
        .segment_bytes(4096)
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

fn cut_file(path: &Path, len: u64) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment");
    f.set_len(len).expect("truncate");
}

/// Bug 5: truncating a torn tail deleted the empty newer segment after the
/// next segment id had been chosen, leaving a gap in the ids.
#[test]
fn torn_tail_before_an_empty_segment_keeps_the_log_contiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(opts(dir.path())).expect("open");
    for i in 0..5u8 {
        store.put(&[b'k', i], &[i; 10]).expect("put");
    }
    store.close().expect("close");
    // Open and close again: segment 2 holds only its header.
    Store::open(opts(dir.path()))
        .expect("open 2")
        .close()
        .expect("close 2");
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2, "{segs:?}");
    // Tear the last record of segment 1.
    let len = fs::metadata(&segs[0]).expect("stat").len();
    let used = 32 + 5 * (29 + 2 + 10);
    assert!(len >= used);
    cut_file(&segs[0], used - 3);
    let store = Store::open(opts(dir.path())).expect("open after tear");
    assert_eq!(store.len(), 4);
    store.put(b"after", b"tear").expect("put");
    store.close().expect("close 3");
    let store = Store::open(opts(dir.path())).expect("open after truncation");
    assert_eq!(store.len(), 5);
    assert_eq!(store.get(b"after").as_deref(), Some(&b"tear"[..]));
}

/// A write of a test run: `None` is a delete.
#[derive(Clone, Debug)]
struct Write {
    key: u8,
    value: Option<Vec<u8>>,
}

/// What is done to the newest segment that holds records, between two
/// sessions.
#[derive(Clone, Debug)]
enum Damage {
    /// Cut a few bytes off the end of the written records.
    TearTail(u8),
    /// Flip one bit of the written part.
    FlipBit(proptest::sample::Index),
    /// Truncate the file anywhere (header and zeroed tail included).
    Truncate(proptest::sample::Index),
}

/// One session: open, write, close (or drop), then maybe damage.
#[derive(Clone, Debug)]
struct Session {
    writes: Vec<Write>,
    close: bool,
    damage: Option<Damage>,
}

fn write_strategy() -> impl Strategy<Value = Write> {
    (
        0u8..8,
        proptest::option::weighted(
            0.8,
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..20),
                proptest::collection::vec(any::<u8>(), 300..900),
            ],
        ),
    )
        .prop_map(|(key, value)| Write { key, value })
}

fn damage_strategy() -> impl Strategy<Value = Option<Damage>> {
    proptest::option::weighted(
        0.6,
        prop_oneof![
            (1u8..40).prop_map(Damage::TearTail),
            any::<proptest::sample::Index>().prop_map(Damage::FlipBit),
            any::<proptest::sample::Index>().prop_map(Damage::Truncate),
        ],
    )
}

fn session_strategy() -> impl Strategy<Value = Session> {
    (
        proptest::collection::vec(write_strategy(), 0..25),
        any::<bool>(),
        damage_strategy(),
    )
        .prop_map(|(writes, close, damage)| Session {
            writes,
            close,
            damage,
        })
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Header length of a segment, from its format field.
fn header_len(bytes: &[u8]) -> usize {
    match bytes.get(8..12) {
        Some([1, 0, 0, 0]) => 32,
        _ => 64,
    }
}

/// End offsets of the records in an undamaged segment.
fn record_ends(bytes: &[u8]) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut at = header_len(bytes);
    while at + 12 <= bytes.len() && bytes[at..at + 12].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let end = at + 12 + len as usize;
        if end > bytes.len() {
            break;
        }
        ends.push(end as u64);
        at = end;
    }
    ends
}

/// Applies `damage` to the newest segment holding records. Returns how many
/// logged records lie wholly before the damage (they must survive) and
/// whether valid records may follow the damage (strict recovery may then
/// refuse to open).
fn apply_damage(dir: &Path, damage: &Damage) -> Option<(usize, bool)> {
    let segs = segments(dir);
    let per_segment: Vec<Vec<u64>> = segs
        .iter()
        .map(|p| record_ends(&fs::read(p).expect("read segment")))
        .collect();
    let victim = per_segment.iter().rposition(|e| !e.is_empty())?;
    let before: usize = per_segment[..victim].iter().map(Vec::len).sum();
    let ends = &per_segment[victim];
    let path = &segs[victim];
    let used = *ends.last().expect("records");
    let header = header_len(&fs::read(path).expect("read")) as u64;
    let file_len = fs::metadata(path).expect("stat").len();
    let (offset, may_follow) = match damage {
        Damage::TearTail(n) => {
            let at = used.saturating_sub(u64::from(*n));
            cut_file(path, at);
            (at, false)
        }
        Damage::FlipBit(i) => {
            let mut b = fs::read(path).expect("read");
            let bit = i.index(used as usize * 8);
            b[bit / 8] ^= 1 << (bit % 8);
            fs::write(path, b).expect("write");
            let at = (bit / 8) as u64;
            if header == 64 && (32..64).contains(&at) {
                // The synced mark (with its own checksum) and reserved
                // bytes: advisory, so nothing is lost.
                return Some((before + ends.len(), false));
            }
            // Records that start after the damaged byte are intact.
            let starts = std::iter::once(header).chain(ends.iter().copied());
            (at, starts.take(ends.len()).any(|s| s > at))
        }
        Damage::Truncate(i) => {
            let at = i.index(file_len as usize + 1) as u64;
            cut_file(path, at);
            (at, false)
        }
    };
    let kept = before + ends.iter().filter(|e| **e <= offset).count();
    Some((kept, may_follow))
}

fn model_of(log: &[Write]) -> Model {
    let mut m = Model::new();
    for w in log {
        match &w.value {
            Some(v) => m.insert(vec![w.key], v.clone()),
            None => m.remove(&vec![w.key]),
        };
    }
    m
}

fn contents(store: &Store) -> Model {
    store.scan_prefix(b"").into_iter().collect()
}

/// Opens the store; on reported corruption that the damage allows, opens
/// again keeping what lies before it.
fn open_checked(dir: &Path, may_follow: bool) -> Result<Store, TestCaseError> {
    match Store::open(opts(dir)) {
        Ok(s) => Ok(s),
        Err(Error::CorruptLog { .. }) if may_follow => {
            Store::open(opts(dir).recovery_mode(RecoveryMode::TruncateAtCorruption))
                .map_err(|e| TestCaseError::fail(format!("lenient open failed: {e}")))
        }
        Err(e) => Err(TestCaseError::fail(format!("open failed: {e}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Sessions of writes, rotations, closes and damage in a row: each open
    /// holds exactly the logged writes that lie before the damage.
    #[test]
    fn sessions_with_damage_always_reopen(sessions in proptest::collection::vec(session_strategy(), 1..7)) {
        let dir = tempfile::tempdir().expect("tempdir");
        // Writes that logged a record, in log order.
        let mut log: Vec<Write> = Vec::new();
        let mut may_follow = false;
        for s in &sessions {
            let store = open_checked(dir.path(), may_follow)?;
            prop_assert_eq!(contents(&store), model_of(&log));
            for w in &s.writes {
                let key = [w.key];
                let logged = match &w.value {
                    Some(v) => store.put(&key, v).map(|_| true),
                    None => store.delete(&key),
                };
                if logged.map_err(|e| TestCaseError::fail(format!("write: {e}")))? {
                    log.push(w.clone());
                }
            }
            if s.close {
                store.close().map_err(|e| TestCaseError::fail(format!("close: {e}")))?;
            } else {
                drop(store);
            }
            may_follow = false;
            if let Some((kept, follow)) = s.damage.as_ref().and_then(|d| apply_damage(dir.path(), d)) {
                prop_assert!(kept <= log.len());
                log.truncate(kept);
                may_follow = follow;
            }
        }
        let store = open_checked(dir.path(), may_follow)?;
        prop_assert_eq!(contents(&store), model_of(&log));
    }
}
