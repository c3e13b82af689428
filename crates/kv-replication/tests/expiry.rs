//! Expiry travels with a replicated write: what a replica stores from a
//! `Replicate`, what it answers to a `Read` and a `StreamReq`, and what a
//! node applies from a streamed page all keep the write's absolute expiry.

use kv_replication::{apply_entries, serve_replica, ClientOp, Config, Node, PeerMsg, Ver};
use kv_storage::{Options, Store};

const FAR: u64 = 4_102_444_800_000; // 2100-01-01, ms

fn store() -> Store {
    Store::open(Options::in_memory()).expect("store")
}

#[test]
fn a_replicated_write_keeps_its_expiry_on_every_path() {
    let a = store();
    let version = Ver { ts: 10, node: 1 };
    let write = PeerMsg::Replicate {
        op: 1,
        key: b"k".to_vec(),
        value: Some(b"v".to_vec()),
        version,
        expires_at: Some(FAR),
    };
    assert!(matches!(
        serve_replica(&a, &write),
        Some(PeerMsg::ReplicateAck { newer: None, .. })
    ));
    assert_eq!(a.get_versioned(b"k").and_then(|v| v.expires_at), Some(FAR));

    let read = serve_replica(
        &a,
        &PeerMsg::Read {
            op: 2,
            key: b"k".to_vec(),
        },
    );
    let Some(PeerMsg::ReadReply { state: Some(s), .. }) = read else {
        panic!("no state in {read:?}");
    };
    assert_eq!((s.version, s.expires_at), (version, Some(FAR)));

    let req = PeerMsg::StreamReq {
        transition: 1,
        ranges: vec![(0, u64::MAX)],
        cursor: (0, 0),
        max_bytes: 1 << 20,
    };
    let Some(PeerMsg::StreamPage { entries, .. }) = serve_replica(&a, &req) else {
        panic!("no stream page");
    };
    assert_eq!(entries.len(), 1);
    let b = store();
    apply_entries(&b, &entries).expect("applied");
    assert_eq!(b.get_versioned(b"k"), a.get_versioned(b"k"));
}

#[test]
fn an_expired_write_shadows_an_older_value_on_a_late_replica() {
    let late = store();
    late.apply(b"k", Some(b"old"), Ver { ts: 5, node: 2 }.into())
        .expect("old write");
    let expired = PeerMsg::Replicate {
        op: 1,
        key: b"k".to_vec(),
        value: Some(b"v".to_vec()),
        version: Ver { ts: 10, node: 1 },
        expires_at: Some(1),
    };
    serve_replica(&late, &expired).expect("answered");
    assert_eq!(late.get(b"k"), None, "the old value must not come back");
    // Replaying the old write changes nothing.
    let old = PeerMsg::Replicate {
        op: 2,
        key: b"k".to_vec(),
        value: Some(b"old".to_vec()),
        version: Ver { ts: 5, node: 2 },
        expires_at: None,
    };
    serve_replica(&late, &old).expect("answered");
    assert_eq!(late.get(b"k"), None);
}

#[test]
fn a_coordinated_put_stores_its_expiry() {
    let s = store();
    let mut node = Node::new(Config::new("127.0.0.1:7001"), 1_000, None, &s, 42);
    let op = ClientOp::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        expires_at: Some(FAR),
    };
    node.handle_client(1_000, 1, op, &s);
    while node.poll_serving(1_000, &s).is_some() {}
    assert_eq!(s.get_versioned(b"k").and_then(|v| v.expires_at), Some(FAR));
    assert!(s.ttl(b"k").flatten().is_some());
}
