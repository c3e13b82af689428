//! The figures [`Store::stats`] gives for monitoring match what was done:
//! flush latencies and group-commit sizes account for every durable record,
//! and the last snapshot's size and duration are kept.

use std::sync::Arc;

use kv_storage::{Durability, Options, SnapshotTrigger, Store};

fn always(dir: &std::path::Path) -> Options {
    Options::new(dir)
        .durability(Durability::Always)
        .snapshot_trigger(SnapshotTrigger::Manual)
}

#[test]
fn one_writer_makes_groups_of_one_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(always(dir.path())).expect("open");
    for i in 0..40u32 {
        store.put(&i.to_le_bytes(), b"v").expect("put");
    }
    let s = store.stats();
    let g = &s.group_commit_records;
    assert_eq!((g.count, g.sum, g.counts[0]), (40, 40, 40), "{g:?}");
    assert_eq!(s.log_flush_micros.count, s.log_flushes);
    assert!(s.log_flushes >= 40, "{}", s.log_flushes);
}

#[test]
fn concurrent_writers_share_flushes_and_every_record_is_counted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(always(dir.path())).expect("open"));
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let key = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    store.put(&key, b"v").expect("put");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let s = store.stats();
    let g = &s.group_commit_records;
    // Every record was made durable by exactly one flush.
    assert_eq!(g.sum, 400, "{g:?}");
    assert_eq!(g.counts.iter().sum::<u64>(), g.count, "{g:?}");
    assert!(g.count <= s.log_flushes, "{g:?} {}", s.log_flushes);
    let l = &s.log_flush_micros;
    assert_eq!(l.count, s.log_flushes);
    assert!(l.counts.iter().sum::<u64>() <= l.count);
}

#[test]
fn the_last_snapshot_keeps_its_size_and_duration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(always(dir.path())).expect("open");
    assert_eq!(store.stats().last_snapshot_bytes, 0);
    for i in 0..100u32 {
        store.put(&i.to_le_bytes(), &[7u8; 100]).expect("put");
    }
    store.snapshot().expect("snapshot");
    let s = store.stats();
    assert_eq!(s.last_snapshot_entries, 100);
    // 100 values of 100 bytes, their keys and the file's framing.
    assert!(s.last_snapshot_bytes > 10_000, "{}", s.last_snapshot_bytes);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum();
    assert_eq!(s.last_snapshot_bytes, on_disk);
    assert!(s.last_snapshot_duration > std::time::Duration::ZERO);
}

#[test]
fn an_in_memory_store_has_empty_figures() {
    let store = Store::open(Options::in_memory()).expect("open");
    store.put(b"k", b"v").expect("put");
    let s = store.stats();
    assert_eq!(s.log_flushes, 0);
    assert_eq!(s.group_commit_records.count, 0);
    assert_eq!(s.log_flush_micros.count, 0);
}
