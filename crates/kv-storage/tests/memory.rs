//! The log does not hold what it has written in the process's memory: its
//! pages leave the memory map as they are written, whatever the durability
//! policy (issue 12, item 3). Linux only: it reads /proc/self/smaps.

#![cfg(target_os = "linux")]

use kv_storage::{Durability, Options, SnapshotTrigger, Store};

/// KiB of the process's RSS that lie in mappings of files whose path
/// contains `dir`.
fn mapped_rss_kib(dir: &std::path::Path) -> u64 {
    let dir = dir.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: address range, ..., path.
            inside = line.contains(&dir);
        } else if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn written_log_pages_leave_the_mapping_without_a_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `no`: nothing ever syncs the log, so only the writer can release it.
    let store = Store::open(
        Options::new(dir.path())
            .durability(Durability::No)
            .snapshot_trigger(SnapshotTrigger::Manual),
    )
    .expect("open");
    let value = [7u8; 200];
    // About 24 MiB of log in one 64 MiB segment.
    for i in 0..110_000u32 {
        store.put(&i.to_le_bytes(), &value).expect("put");
    }
    let rss = mapped_rss_kib(dir.path());
    assert!(
        rss <= 4 << 10,
        "{rss} KiB of the log's mapping are resident after writing ~24 MiB"
    );
    // Nothing was lost by releasing the pages: every value reads back, and
    // reads back after a reopen.
    assert_eq!(store.get(&7u32.to_le_bytes()).as_deref(), Some(&value[..]));
    store.close().expect("close");
    let store = Store::open(Options::new(dir.path())).expect("reopen");
    assert_eq!(store.len(), 110_000);
    assert_eq!(
        store.get(&109_999u32.to_le_bytes()).as_deref(),
        Some(&value[..])
    );
}
