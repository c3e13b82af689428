//! Bug 7: after a power cut under `everysec`, the unsynced end of the log
//! can come back with a hole followed by valid records. That is a torn
//! tail, not corruption: recovery must truncate it and open, while damage
//! before the last synced position is still refused as corruption.

use std::fs;
use std::path::Path;
use std::time::Duration;

use kv_storage::testing::{Crash, SimFs, SECTOR};
use kv_storage::{Durability, Error, Options, SnapshotTrigger, Store};

const SEGMENT: &str = "/data/wal-00000000000000000001.log";

fn opts(fs: &SimFs) -> Options {
    Options::new("/data")
        .file_system(fs)
        .durability(Durability::EverySec)
        .snapshot_trigger(SnapshotTrigger::Manual)
        .fsync_interval(Duration::from_secs(3600))
}

/// End offsets of the records of a segment.
fn record_ends(b: &[u8]) -> Vec<u64> {
    let mut at = if b[8..12] == [1, 0, 0, 0] { 32 } else { 64 };
    let mut ends = Vec::new();
    while at + 12 <= b.len() && b[at..at + 12].iter().any(|&x| x != 0) {
        let len = u32::from_le_bytes(b[at + 8..at + 12].try_into().expect("4 bytes"));
        at += 12 + len as usize;
        ends.push(at as u64);
    }
    ends
}

#[test]
fn a_hole_in_the_unsynced_tail_is_a_torn_tail() {
    let fs = SimFs::new();
    let store = Store::open(opts(&fs)).expect("open");
    store.put(b"synced", b"before the flush").expect("put");
    store.fsync_tick().expect("periodic flush");
    for i in 0..6u8 {
        store.put(&[b'u', i], &[i; 700]).expect("put");
    }
    let ends = record_ends(&fs.contents(Path::new(SEGMENT)).expect("segment"));
    assert_eq!(ends.len(), 7);
    // The power cut loses the sector where the first unsynced record
    // starts and keeps the later ones.
    let hole = ends[0] / SECTOR as u64 * SECTOR as u64;
    let lost = vec![(SEGMENT.into(), hole.max(ends[0]), hole + SECTOR as u64)];
    let crashed = fs.crash(&Crash::Lose(lost));
    drop(store);

    let store = Store::open(opts(&crashed)).expect("open after the power cut");
    assert_eq!(
        store.get(b"synced").as_deref(),
        Some(&b"before the flush"[..])
    );
    let report = store.recovery_report();
    assert_eq!(report.truncations.len(), 1, "{report}");
    let t = &report.truncations[0];
    assert!(!t.corruption, "{report}");
    assert_eq!(t.offset, ends[0]);
    assert!(t.reason.contains("synced only up to"), "{report}");
    // The truncation is durable: the next open finds a clean log.
    drop(store);
    let store = Store::open(opts(&crashed)).expect("second open");
    assert!(store.recovery_report().truncations.is_empty());
    assert_eq!(store.len(), 1);
}

/// Damage in synced data with valid records after it is still corruption.
#[test]
fn damage_before_the_synced_position_is_still_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || Options::new(dir.path()).snapshot_trigger(SnapshotTrigger::Manual);
    let store = Store::open(opts()).expect("open");
    for i in 0..5u8 {
        store.put(&[b'k', i], &[i; 100]).expect("put");
    }
    store.flush().expect("flush");
    store.close().expect("close");
    let path = dir.path().join("wal-00000000000000000001.log");
    let mut b = fs::read(&path).expect("read");
    let ends = record_ends(&b);
    let second = ends[0] as usize;
    b[second + 20] ^= 1;
    fs::write(&path, b).expect("write");
    match Store::open(opts()) {
        Err(Error::CorruptLog { offset, .. }) => assert_eq!(offset, second as u64),
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Format 1 (32-byte segment headers, no synced mark), written by the
/// previous release, still opens.
#[test]
fn format_1_data_directory_still_opens() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let dir = tempfile::tempdir().expect("tempdir");
    for item in fs::read_dir(&src).expect("fixture") {
        let item = item.expect("entry");
        fs::copy(item.path(), dir.path().join(item.file_name())).expect("copy");
    }
    let store = Store::open(Options::new(dir.path())).expect("open format 1");
    assert_eq!(store.get(b"alpha").as_deref(), Some(&b"uno"[..]));
    assert_eq!(store.get(b"gamma").as_deref(), Some(&b"three"[..]));
    assert_eq!(store.get(b"beta"), None);
    assert_eq!(store.len(), 2);
    let report = store.recovery_report();
    assert!(report.snapshot.is_some(), "{report}");
    assert_eq!(report.records_replayed, 3, "{report}");
    store.put(b"delta", b"four").expect("write on top");
    drop(store);
    let store = Store::open(Options::new(dir.path())).expect("reopen");
    assert_eq!(store.len(), 3);
}
