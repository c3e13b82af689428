//! Bug 6: a full disk while the log rotates must not block writes once
//! space is freed, and must lose nothing acknowledged.

use kv_storage::testing::{Crash, SimFs};
use kv_storage::{Durability, Options, Store};

fn opts(fs: &SimFs) -> Options {
    Options::new("/data")
        .file_system(fs)
        .durability(Durability::Always)
        .segment_bytes(4096)
}

fn key(i: u32) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

#[test]
fn writes_resume_after_the_disk_had_no_space_for_a_new_segment() {
    let fs = SimFs::new();
    let store = Store::open(opts(&fs)).expect("open");
    // The open segment is allocated already; the next one cannot be.
    fs.set_no_space(true);
    let value = vec![7u8; 1000];
    let mut acked = 0;
    let err = loop {
        match store.put(&key(acked), &value) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "the log never needed a new segment");
    };
    assert!(err.to_string().contains("allocate"), "{err}");
    assert!(
        store.put(b"still", &value).is_err(),
        "the disk is still full"
    );

    fs.set_no_space(false);
    store
        .put(b"after", b"space returned")
        .expect("a write once space is back, without a restart");
    for i in acked..acked + 100 {
        store.put(&key(i), &value).expect("more writes");
    }

    // Everything acknowledged survives a power cut and a reopen.
    let fs = fs.crash(&Crash::DropUnsynced);
    drop(store);
    let store = Store::open(opts(&fs)).expect("reopen");
    for i in 0..acked + 100 {
        assert_eq!(store.get(&key(i)).as_deref(), Some(&value[..]), "k{i}");
    }
    assert_eq!(store.get(b"after").as_deref(), Some(&b"space returned"[..]));
    assert_eq!(store.get(b"still"), None);
}
