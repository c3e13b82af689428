//! A node that restarts more often than it reaches the snapshot trigger must
//! still compact: the log written since the last snapshot counts toward the
//! trigger across restarts, so the log on disk stays bounded.

use std::fs;
use std::path::Path;

use kv_storage::{Options, SnapshotTrigger, Store};

const MIN_BYTES: u64 = 128 << 10;
const VALUE: usize = 1000;
const KEYS: u32 = 50;
const PER_SESSION: u32 = 40;
const SESSIONS: u32 = 40;
const SEGMENT: u64 = 64 << 10;

fn opts(dir: &Path) -> Options {
    Options::new(dir)
        .segment_bytes(SEGMENT)
        .snapshot_trigger(SnapshotTrigger::LogGrowth {
            percent: 100,
            min_bytes: MIN_BYTES,
        })
}

/// Bytes of all log segment files in `dir`.
fn log_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum()
}

/// Bug 11: every open restarted the trigger's counters at zero, so a store
/// reopened after each 40 KiB of writes never reached its 128 KiB trigger
/// and the log grew by one segment per restart.
#[test]
fn restarts_do_not_let_the_log_grow_without_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The snapshot holds 50 keys of 1 KB (about 50 KiB), so the trigger is
    // the 128 KiB floor, reached every `per_trigger` sessions. Every open
    // starts a segment, allocated 64 KiB, and a session's 40 KiB fit in
    // it. The log kept reaches back to the fallback snapshot (or to the
    // start until there are two snapshots): at most two triggers' worth of
    // sessions, plus the session in progress, the segment a snapshot
    // rotates to and one for rounding. Without compaction the log gains a
    // segment per restart: 40 segments, 2.5 MiB.
    let session_bytes = u64::from(PER_SESSION) * (29 + 2 + VALUE as u64);
    let per_trigger = MIN_BYTES.div_ceil(session_bytes);
    let bound = (2 * per_trigger + 3) * SEGMENT;
    let mut peak = 0;
    for session in 0..SESSIONS {
        let store = Store::open(opts(dir.path())).expect("open");
        for i in 0..PER_SESSION {
            let n = session * PER_SESSION + i;
            let mut v = n.to_le_bytes().to_vec();
            v.resize(VALUE, b'v');
            store
                .put(format!("k{}", n % KEYS).as_bytes(), &v)
                .expect("put");
        }
        // A snapshot requested by this session (at open or by a write)
        // finishes before the store is dropped.
        store.wait_background_idle();
        drop(store);
        peak = peak.max(log_bytes(dir.path()));
        assert!(
            peak <= bound,
            "after {} restarts the log holds {peak} bytes (bound {bound})",
            session + 1
        );
    }
    let store = Store::open(opts(dir.path())).expect("open");
    let last = SESSIONS * PER_SESSION - 1;
    let got = store
        .get(format!("k{}", last % KEYS).as_bytes())
        .expect("key");
    assert_eq!(got[..4], last.to_le_bytes());
    assert_eq!(store.len(), KEYS as usize);
}

/// A store that dies before its next write still compacts: the log it
/// replays at open is already past the trigger, so open asks for a
/// snapshot (taken in the background) without waiting for a write.
#[test]
fn a_replayed_log_past_the_trigger_is_compacted_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manual = Options::new(dir.path()).snapshot_trigger(SnapshotTrigger::Manual);
    let store = Store::open(manual).expect("open");
    for i in 0..60u32 {
        store.put(&i.to_le_bytes(), b"v").expect("put");
    }
    drop(store);
    let every_50 = Options::new(dir.path()).snapshot_trigger(SnapshotTrigger::Operations(50));
    let store = Store::open(every_50).expect("reopen");
    assert_eq!(store.recovery_report().records_replayed, 60);
    store.wait_background_idle();
    let stats = store.stats();
    assert_eq!(stats.snapshots_taken, 1, "{stats:?}");
    assert_eq!(stats.last_snapshot_entries, 60);
}
