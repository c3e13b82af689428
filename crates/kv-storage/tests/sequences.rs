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

/// The store's files, newest segment last, with their lengths.
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
