//! Bug 4: under `always`, `Store::apply` that finds a newer version already
//! held answers `Ok(false)`, which a replica reports as "I hold a newer
//! version" — a durability claim. The newer version may still be waiting
//! for its fsync; the answer must wait for it too.

use kv_storage::testing::{Crash, SimFs};
use kv_storage::{Durability, Options, Store, Version};

fn open(fs: &SimFs) -> Store {
    Store::open(
        Options::new("/data")
            .file_system(fs)
            .durability(Durability::Always),
    )
    .expect("open")
}

/// The newer version's fsync fails: it is in memory but not on disk. An
/// older replicated write must not be answered "already newer".
#[test]
fn apply_of_an_older_version_waits_for_the_held_version() {
    let fs = SimFs::new();
    let store = open(&fs);
    fs.set_fail_sync(true);
    let newer = Version::new(200, 1);
    assert!(
        store.apply(b"k", Some(b"new"), newer).is_err(),
        "fsync failed"
    );
    fs.set_fail_sync(false);
    let answer = store.apply(b"k", Some(b"old"), Version::new(100, 2));
    assert!(
        answer.is_err(),
        "apply answered {answer:?} while the version it holds was never made durable"
    );
}

/// Likewise for a delete that finds the key already deleted by a tombstone
/// whose fsync failed.
#[test]
fn delete_of_a_deleted_key_waits_for_the_tombstone() {
    let fs = SimFs::new();
    let store = open(&fs);
    store.put(b"k", b"v").expect("put");
    fs.set_fail_sync(true);
    assert!(store.delete(b"k").is_err(), "fsync failed");
    fs.set_fail_sync(false);
    let answer = store.delete(b"k");
    assert!(
        answer.is_err(),
        "delete answered {answer:?} while the tombstone was never made durable"
    );
}

/// When everything is durable, an older write is refused with `Ok(false)`
/// and costs no fsync.
#[test]
fn apply_of_an_older_version_after_a_durable_write_needs_no_fsync() {
    let fs = SimFs::new();
    let store = open(&fs);
    assert!(store
        .apply(b"k", Some(b"new"), Version::new(200, 1))
        .expect("apply"));
    let syncs = fs.syncs();
    assert!(!store
        .apply(b"k", Some(b"old"), Version::new(100, 2))
        .expect("apply"));
    assert_eq!(fs.syncs(), syncs);
    assert_eq!(store.get(b"k").as_deref(), Some(&b"new"[..]));
}

/// The bug as it happens without any failure: the newer version is
/// appended and its fsync is under way (held at the simulated disk) when
/// an older replicated write arrives. The answer must not come before that
/// fsync completes.
#[test]
fn apply_of_an_older_version_waits_for_the_fsync_in_progress() {
    const SEGMENT: &str = "/data/wal-00000000000000000001.log";
    const MARKER: &[u8] = b"newer-version-held-0123456789";
    let fs = SimFs::new();
    let store = open(&fs);
    fs.hold_syncs(true);
    std::thread::scope(|s| {
        let writer = s.spawn(|| store.apply(b"k", Some(MARKER), Version::new(200, 1)));
        fs.wait_held_syncs(1);
        // The newer version is in the map; its fsync waits at the gate.
        let replica = s.spawn(|| {
            let answer = store.apply(b"k", Some(b"old"), Version::new(100, 2));
            let on_disk = fs
                .crash(&Crash::DropUnsynced)
                .contents(std::path::Path::new(SEGMENT))
                .is_some_and(|b| b.windows(MARKER.len()).any(|w| w == MARKER));
            (answer.ok(), on_disk)
        });
        // Let the fsync go once the replica has either answered or is
        // waiting for that fsync.
        while !replica.is_finished() && store.durability_waiters() == 0 {
            std::thread::yield_now();
        }
        fs.hold_syncs(false);
        assert_eq!(writer.join().expect("writer").ok(), Some(true));
        let (answer, on_disk) = replica.join().expect("replica");
        assert_eq!(answer, Some(false));
        assert!(
            on_disk,
            "apply answered Ok(false) before the version it holds was durable"
        );
    });
}
