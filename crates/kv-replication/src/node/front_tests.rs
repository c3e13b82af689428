//! Unit tests of the entry point for peers' messages ([`arrive`]) and of
//! the node's handling of what it refuses.

use super::*;
use kv_storage::{Options, Store};

const NOW: u64 = 1_000_000;

/// Node `a:1` of a three-member cluster, its outputs drained.
fn node(s: &Store) -> Node {
    let saved = Persisted {
        members: ["a:1", "b:1", "c:1"]
            .iter()
            .map(|id| Digest::new(id, Status::Normal))
            .collect(),
        clock_floor: 0,
        stream: None,
    };
    let mut n = Node::new(Config::new("a:1"), NOW, Some(saved), s, 1);
    while n.poll_output().is_some() {}
    n
}

/// A write of `k` stamped `ts_ms` (ms) in an envelope of ring `ring`.
fn write(ring: u64, ts_ms: u64) -> PeerMsg {
    PeerMsg::OnRing {
        ring,
        request: Box::new(PeerMsg::Replicate {
            op: 7,
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            version: Ver {
                ts: ts_ms * 1000,
                node: 2,
            },
            expires_at: None,
        }),
    }
}

/// What `n` sends and logs.
fn outputs(n: &mut Node) -> (Vec<PeerMsg>, Vec<String>) {
    let (mut sent, mut logged) = (Vec::new(), Vec::new());
    while let Some(o) = n.poll_output() {
        match o {
            Output::Send { msg, .. } => sent.push(msg),
            Output::Event(e) => logged.push(e.to_string()),
            _ => {}
        }
    }
    (sent, logged)
}

/// A write on this node's ring, within the maximum clock offset, is
/// served where it arrives: stored, acknowledged, its timestamp handed
/// back to be observed.
#[test]
fn a_write_on_the_nodes_ring_is_served_with_its_timestamp() {
    let s = Store::open(Options::in_memory()).expect("store");
    let n = node(&s);
    let view = n.replica_view(NOW);
    assert!(view.serving);
    match arrive(&s, &view, write(n.ring_id(), NOW + 100)) {
        Arrival::Served {
            reply: PeerMsg::ReplicateAck { op: 7, .. },
            observed,
            ..
        } => assert_eq!(observed, Some((NOW + 100) * 1000)),
        other => panic!("not served: {other:?}"),
    }
    assert!(s.get_versioned(b"k").is_some(), "stored");
}

/// Before a restarted node checked how long it was away nothing is
/// served: the node gets the write, and answers nothing either.
#[test]
fn a_node_that_has_not_checked_its_outage_serves_nothing() {
    let s = Store::open(Options::in_memory()).expect("store");
    let mut n = node(&s);
    n.restore_contact(Some(NOW - 10), true);
    let view = n.replica_view(NOW);
    assert!(!view.serving);
    let Arrival::ToNode(msg) = arrive(&s, &view, write(n.ring_id(), NOW)) else {
        panic!("served before the outage check");
    };
    n.handle_message(NOW, "b:1", msg, &s);
    assert!(outputs(&mut n).0.is_empty(), "the node answered");
    assert!(s.get_versioned(b"k").is_none(), "stored");
}

/// A request from a coordinator on another ring goes to the node, which
/// refuses it with its members.
#[test]
fn a_request_from_another_ring_goes_to_the_node_which_refuses_it() {
    let s = Store::open(Options::in_memory()).expect("store");
    let mut n = node(&s);
    let view = n.replica_view(NOW);
    let read = PeerMsg::OnRing {
        ring: n.ring_id() ^ 1,
        request: Box::new(PeerMsg::Read {
            op: 9,
            key: b"k".to_vec(),
        }),
    };
    let Arrival::ToNode(msg) = arrive(&s, &view, read) else {
        panic!("served a request from another ring");
    };
    n.handle_message(NOW, "b:1", msg, &s);
    let (sent, _) = outputs(&mut n);
    assert!(
        matches!(sent.as_slice(), [PeerMsg::RingDiffers { op: 9, .. }]),
        "{sent:?}"
    );
}

/// A write further ahead than the maximum clock offset is neither stored
/// nor answered where it arrives; the node refuses it too, and logs it.
#[test]
fn a_write_too_far_ahead_goes_to_the_node_and_is_not_stored() {
    let s = Store::open(Options::in_memory()).expect("store");
    let mut n = node(&s);
    let view = n.replica_view(NOW);
    let far = NOW + DEFAULT_MAX_CLOCK_OFFSET + 1;
    let Arrival::ToNode(msg) = arrive(&s, &view, write(n.ring_id(), far)) else {
        panic!("served a write too far ahead");
    };
    assert!(s.get_versioned(b"k").is_none(), "stored");
    n.handle_message(NOW, "b:1", msg, &s);
    let (sent, logged) = outputs(&mut n);
    assert!(sent.is_empty(), "{sent:?}");
    assert!(s.get_versioned(b"k").is_none(), "stored by the node");
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("refused") && l.contains("from b:1")),
        "not logged: {logged:?}"
    );
}
