//! Key expiry: lazy on every read, active in the background (driven here
//! by `expire_tick`), durable across restarts and snapshots, and carried by
//! the versioned API. Time comes from a simulated clock: nothing sleeps.

use std::fs;
use std::path::Path;
use std::time::Duration;

use kv_storage::testing::SimClock;
use kv_storage::{Durability, Options, SnapshotTrigger, Store, Version};

/// 2026-01-01, in ms since the Unix epoch.
const T0: u64 = 1_767_225_600_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn durable(dir: &Path, clock: &SimClock) -> Options {
    Options::new(dir)
        .durability(Durability::Always)
        .snapshot_trigger(SnapshotTrigger::Manual)
        .clock(clock)
        // The background expiry would run on its own schedule; the tests
        // call `expire_tick` instead.
        .expire_interval(Duration::from_secs(3600))
}

#[test]
fn expired_values_read_as_absent_everywhere() {
    let clock = SimClock::at_ms(T0);
    let store = Store::open(Options::in_memory().clock(&clock)).expect("open");
    store.put(b"keep", b"1").expect("put");
    store.put_with_ttl(b"soon", b"2", secs(10)).expect("put");
    store.put_with_ttl(b"later", b"3", secs(100)).expect("put");
    assert_eq!(store.len(), 3);
    assert_eq!(store.ttl(b"soon"), Some(Some(secs(10))));
    assert_eq!(store.ttl(b"keep"), Some(None));
    assert_eq!(store.ttl(b"nothing"), None);

    clock.advance(Duration::from_millis(9_999));
    assert_eq!(store.get(b"soon").as_deref(), Some(&b"2"[..]));
    assert_eq!(store.ttl(b"soon"), Some(Some(Duration::from_millis(1))));
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.get(b"soon"), None);
    assert!(!store.contains_key(b"soon"));
    assert!(!store.get_with(b"soon", |v| v.is_some()));
    assert_eq!(store.ttl(b"soon"), None);
    assert_eq!(store.len(), 2);
    let keys: Vec<Vec<u8>> = store.scan_prefix(b"").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"keep".to_vec(), b"later".to_vec()]);
    let (mut page, next) = store.scan_cursor(0, 10);
    page.sort();
    assert_eq!((page, next), (vec![b"keep".to_vec(), b"later".to_vec()], 0));
    assert_eq!(store.stats().keys, 2);
    // Deleting an expired key finds nothing.
    assert!(!store.delete(b"soon").expect("delete"));
    // The versioned view shows a tombstone that remembers its expiry.
    let v = store.get_versioned(b"soon").expect("versioned");
    assert_eq!((v.value, v.expires_at), (None, Some(T0 + 10_000)));

    // The active expiry turns it into a tombstone; nothing visible changes.
    assert_eq!(store.expire_tick(), 1);
    assert_eq!(store.expire_tick(), 0);
    assert_eq!(store.len(), 2);
    assert_eq!(store.get(b"soon"), None);
    // A tombstone left by an expiry is purged only once its expiry is
    // older than the cut-off.
    assert_eq!(store.purge_tombstones((T0 + 10_000) * 1000), 0);
    assert_eq!(store.purge_tombstones((T0 + 10_001) * 1000), 1);
    assert_eq!(store.get_versioned(b"soon"), None);
}

#[test]
fn expire_persist_and_expire_at() {
    let clock = SimClock::at_ms(T0);
    let store = Store::open(Options::in_memory().clock(&clock)).expect("open");
    assert!(!store.expire(b"k", secs(5)).expect("expire absent"));
    assert!(!store.persist(b"k").expect("persist absent"));
    let v1 = store.put(b"k", b"v").expect("put");
    assert!(!store.persist(b"k").expect("persist without expiry"));
    assert!(store.expire(b"k", secs(5)).expect("expire"));
    assert_eq!(store.ttl(b"k"), Some(Some(secs(5))));
    let v2 = store.get_versioned(b"k").expect("versioned");
    assert!(v2.version > v1, "changing an expiry is a new version");
    assert_eq!(v2.value.as_deref(), Some(&b"v"[..]));
    assert_eq!(v2.expires_at, Some(T0 + 5_000));
    assert!(store.persist(b"k").expect("persist"));
    assert_eq!(store.ttl(b"k"), Some(None));
    clock.advance(secs(60));
    assert_eq!(store.get(b"k").as_deref(), Some(&b"v"[..]));

    assert!(store
        .expire_at(b"k", clock.now_ms() + 1_000)
        .expect("expire_at"));
    assert_eq!(store.ttl(b"k"), Some(Some(secs(1))));
    // A put removes the expiry, as Redis's SET does.
    store.put(b"k", b"w").expect("put");
    assert_eq!(store.ttl(b"k"), Some(None));
    // An expiry in the past makes the key absent at once.
    assert!(store.expire_at(b"k", 5).expect("expire_at past"));
    assert_eq!(store.get(b"k"), None);
    assert!(!store.expire(b"k", secs(5)).expect("expire expired"));
    // A zero TTL is already over.
    store.put_with_ttl(b"z", b"v", Duration::ZERO).expect("put");
    assert_eq!(store.get(b"z"), None);
    assert_eq!(store.len(), 0);
}

#[test]
fn recovery_drops_what_expired_while_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = SimClock::at_ms(T0);
    let store = Store::open(durable(dir.path(), &clock)).expect("open");
    store.put_with_ttl(b"short", b"1", secs(10)).expect("put");
    store.put_with_ttl(b"long", b"2", secs(1000)).expect("put");
    store.put(b"plain", b"3").expect("put");
    // An older value under a key whose newer value expires: the expiry
    // must not bring the older value back.
    store.put(b"shadow", b"old").expect("put");
    store
        .put_with_ttl(b"shadow", b"new", secs(10))
        .expect("put");
    store.close().expect("close");

    clock.advance(secs(30));
    let store = Store::open(durable(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.get(b"short"), None);
    assert_eq!(store.get(b"shadow"), None);
    assert_eq!(store.get(b"long").as_deref(), Some(&b"2"[..]));
    assert_eq!(store.ttl(b"long"), Some(Some(secs(970))));
    assert_eq!(store.ttl(b"plain"), Some(None));
    assert_eq!(store.len(), 2);
    assert_eq!(store.recovery_report().keys, 2);

    // Through a snapshot (which drops the tombstones the expiry left, the
    // grace being zero) and the log after it.
    store.put_with_ttl(b"after", b"4", secs(50)).expect("put");
    store.snapshot().expect("snapshot");
    store.put_with_ttl(b"tail", b"5", secs(500)).expect("put");
    store.close().expect("close");
    clock.advance(secs(100));
    let store = Store::open(durable(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.get(b"after"), None);
    assert_eq!(store.get(b"shadow"), None);
    assert_eq!(store.ttl(b"long"), Some(Some(secs(870))));
    assert_eq!(store.ttl(b"tail"), Some(Some(secs(400))));
    assert_eq!(store.len(), 3);
    store.close().expect("close");

    clock.advance(secs(10_000));
    let store = Store::open(durable(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.len(), 1);
    assert_eq!(store.get(b"plain").as_deref(), Some(&b"3"[..]));
}

#[test]
fn the_active_expiry_is_not_logged_and_replays_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = SimClock::at_ms(T0);
    let store = Store::open(durable(dir.path(), &clock)).expect("open");
    for i in 0..1000u32 {
        let ttl = Duration::from_millis(u64::from(i % 10) * 1000 + 1);
        store
            .put_with_ttl(&i.to_be_bytes(), b"v", ttl)
            .expect("put");
    }
    let log_before = store.stats().log_bytes;
    clock.advance(secs(5));
    assert_eq!(store.expire_tick(), 500);
    assert_eq!(store.stats().log_bytes, log_before);
    assert_eq!(store.len(), 500);
    store.close().expect("close");
    let store = Store::open(durable(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.len(), 500);
    assert_eq!(store.expire_tick(), 0);
    clock.advance(secs(5));
    assert_eq!(store.len(), 0);
    assert_eq!(store.expire_tick(), 500);
}

#[test]
fn the_versioned_api_carries_the_expiry() {
    let clock = SimClock::at_ms(T0);
    let primary = Store::open(Options::in_memory().clock(&clock)).expect("open");
    let replica = Store::open(Options::in_memory().clock(&clock)).expect("open");
    primary.put(b"k", b"old").expect("put");
    let old = primary.get_versioned(b"k").expect("versioned");
    primary.put_with_ttl(b"k", b"new", secs(10)).expect("put");
    primary.put_with_ttl(b"j", b"x", secs(100)).expect("put");

    // Copy everything across with its expiry.
    for (k, v) in primary.iter_versioned() {
        replica
            .apply_with_expiry(&k, v.value.as_deref(), v.version, v.expires_at)
            .expect("apply");
    }
    assert_eq!(replica.ttl(b"j"), Some(Some(secs(100))));
    assert_eq!(replica.get_versioned(b"k"), primary.get_versioned(b"k"));

    // A replica that is behind receives the expired write after the
    // expiry: it stores it (it is newer), and an older write that arrives
    // later does not resurrect the key.
    let late = Store::open(Options::in_memory().clock(&clock)).expect("open");
    clock.advance(secs(20));
    let newer = primary.get_versioned(b"k").expect("versioned");
    assert_eq!(newer.value, None);
    assert!(late
        .apply_with_expiry(b"k", Some(b"new"), newer.version, newer.expires_at)
        .expect("apply expired"));
    assert!(!late
        .apply(b"k", old.value.as_deref(), old.version)
        .expect("apply older"));
    assert_eq!(late.get(b"k"), None);
    late.expire_tick();
    assert!(!late
        .apply(b"k", old.value.as_deref(), old.version)
        .expect("apply older after sweep"));
    assert_eq!(late.get(b"k"), None);
    // The plain `apply` writes no expiry.
    assert!(late
        .apply(b"p", Some(b"v"), Version::new(1, 9))
        .expect("apply"));
    assert_eq!(late.ttl(b"p"), Some(None));
}

#[test]
fn an_older_format_directory_opens_and_takes_expiries() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let dir = tempfile::tempdir().expect("tempdir");
    for item in fs::read_dir(&src).expect("fixture") {
        let item = item.expect("entry");
        fs::copy(item.path(), dir.path().join(item.file_name())).expect("copy");
    }
    let clock = SimClock::at_ms(T0);
    let store = Store::open(durable(dir.path(), &clock)).expect("open format 1");
    assert_eq!(store.get(b"alpha").as_deref(), Some(&b"uno"[..]));
    assert_eq!(store.ttl(b"alpha"), Some(None));
    assert!(store.expire(b"alpha", secs(10)).expect("expire"));
    store
        .put_with_ttl(b"delta", b"four", secs(100))
        .expect("put");
    store.snapshot().expect("snapshot in the new format");
    store.close().expect("close");
    clock.advance(secs(50));
    let store = Store::open(durable(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.get(b"alpha"), None);
    assert_eq!(store.get(b"gamma").as_deref(), Some(&b"three"[..]));
    assert_eq!(store.ttl(b"delta"), Some(Some(secs(50))));
    assert_eq!(store.len(), 2);
}
