//! Writes deferred under `always` (`Store::deferring`): applied at once,
//! reported durable only after the fsync that covers them, never before;
//! one flush covers every write deferred before it; a failed fsync is
//! reported, never taken for durability.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use kv_storage::testing::{Crash, SimFs};
use kv_storage::{Durability, Options, Store, Ticket};

fn open(fs: &SimFs, durability: Durability) -> Store {
    Store::open(Options::new("/data").file_system(fs).durability(durability)).expect("open")
}

/// A channel that receives a message after each flush the store runs for
/// a requested ticket.
fn flushes(store: &Store) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    store.on_durable(Arc::new(move || {
        let _ = tx.send(());
    }));
    rx
}

/// Waits (with a deadline) until the ticket is durable or failed.
fn settle(store: &Store, rx: &mpsc::Receiver<()>, t: Ticket) -> kv_storage::Result<()> {
    loop {
        if store.is_durable(t)? {
            return Ok(());
        }
        rx.recv_timeout(Duration::from_secs(10))
            .expect("no flush reported within 10 s");
    }
}

fn value_after_power_cut(fs: &SimFs, key: &[u8]) -> Option<Vec<u8>> {
    open(&fs.crash(&Crash::DropUnsynced), Durability::Always).get(key)
}

#[test]
fn a_ticket_is_durable_only_after_the_fsync_that_covers_it() {
    let fs = SimFs::new();
    let store = open(&fs, Durability::Always);
    let rx = flushes(&store);
    fs.hold_syncs(true);
    let written = store.deferring(|| store.put(b"k", b"v"));
    written.value.expect("put");
    let t = written.ticket.expect("a write under always gets a ticket");
    assert_eq!(store.get(b"k"), Some(b"v".to_vec()), "applied at once");
    assert!(!store.is_durable(t).expect("no failure"));

    store.request_durable(t);
    fs.wait_held_syncs(1);
    assert!(
        !store.is_durable(t).expect("no failure"),
        "durable while its fsync is held at the gate"
    );
    assert_eq!(value_after_power_cut(&fs, b"k"), None, "not yet on disk");

    fs.hold_syncs(false);
    settle(&store, &rx, t).expect("durable");
    assert_eq!(value_after_power_cut(&fs, b"k"), Some(b"v".to_vec()));
}

#[test]
fn one_flush_covers_every_write_deferred_before_it() {
    let fs = SimFs::new();
    let store = open(&fs, Durability::Always);
    let rx = flushes(&store);
    let before = store.stats().log_flushes;
    let written = store.deferring(|| {
        (0..50).try_for_each(|i| store.put(format!("k{i}").as_bytes(), b"v").map(drop))
    });
    written.value.expect("puts");
    let t = written.ticket.expect("ticket");
    store.request_durable(t);
    settle(&store, &rx, t).expect("durable");
    assert_eq!(
        store.stats().log_flushes - before,
        1,
        "one flush for 50 writes"
    );
    for i in 0..50 {
        let key = format!("k{i}");
        assert_eq!(
            value_after_power_cut(&fs, key.as_bytes()),
            Some(b"v".to_vec())
        );
    }
}

#[test]
fn a_failed_fsync_fails_the_ticket() {
    let fs = SimFs::new();
    let store = open(&fs, Durability::Always);
    let rx = flushes(&store);
    fs.set_fail_sync(true);
    let written = store.deferring(|| store.put(b"k", b"v"));
    written.value.expect("applied; the fsync comes later");
    let t = written.ticket.expect("ticket");
    store.request_durable(t);
    let settled = settle(&store, &rx, t);
    assert!(
        matches!(settled, Err(kv_storage::Error::Poisoned(_))),
        "a ticket whose fsync failed reported {settled:?}"
    );
    assert!(
        store.put(b"k2", b"v").is_err(),
        "the store is read-only now"
    );
}

#[test]
fn a_write_that_changes_nothing_waits_for_the_version_it_saw() {
    let fs = SimFs::new();
    let store = open(&fs, Durability::Always);
    fs.hold_syncs(true);
    let first = store.deferring(|| store.put(b"k", b"v"));
    let first = first.ticket.expect("ticket");
    // SET NX on a key that holds a value not yet durable: its answer
    // ("not set") speaks of that value, so it waits for it too.
    let nx = store.deferring(|| store.update(b"k", |_| (kv_storage::Change::Keep, ())));
    assert!(nx.ticket.is_some_and(|t| t >= first), "{:?}", nx.ticket);
    fs.hold_syncs(false);
}

#[test]
fn other_policies_give_no_ticket_and_change_nothing() {
    for durability in [Durability::EverySec, Durability::No] {
        let fs = SimFs::new();
        let store = open(&fs, durability);
        let written = store.deferring(|| store.put(b"k", b"v"));
        written.value.expect("put");
        assert!(written.ticket.is_none(), "{durability:?}");
        assert_eq!(store.get(b"k"), Some(b"v".to_vec()));
    }
    let store = Store::open(Options::in_memory()).expect("open");
    assert!(store.deferring(|| store.put(b"k", b"v")).ticket.is_none());
}

#[test]
fn blocking_writes_inside_no_scope_still_wait_for_their_fsync() {
    let fs = SimFs::new();
    let store = Arc::new(open(&fs, Durability::Always));
    fs.hold_syncs(true);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || store.put(b"k", b"v").map(drop))
    };
    fs.wait_held_syncs(1);
    assert!(!writer.is_finished(), "put returned before its fsync");
    fs.hold_syncs(false);
    writer.join().expect("thread").expect("put");
    assert_eq!(value_after_power_cut(&fs, b"k"), Some(b"v".to_vec()));
}
