//! Bug 4: under `always`, `Store::apply` that finds a newer version already
//! held answers `Ok(false)`, which a replica reports as "I hold a newer
//! version" — a durability claim. The newer version may still be waiting
//! for its fsync; the answer must wait for it too.

use kv_storage::testing::SimFs;
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
