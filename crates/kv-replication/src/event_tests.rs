//! Each event's line, against the literal text operators, docs and the
//! server's tests read: a changed word fails here first.

use super::*;

fn id(s: &str) -> NodeId {
    s.to_string()
}

fn ids(s: &[&str]) -> Vec<NodeId> {
    s.iter().map(|s| s.to_string()).collect()
}

fn line(e: Event) -> String {
    e.to_string()
}

#[test]
fn member_events_read_as_before() {
    let a = || id("10.0.0.13:7003");
    assert_eq!(
        line(Event::MemberLeft { id: a() }),
        "member 10.0.0.13:7003 has left the cluster: it holds no range any more"
    );
    assert_eq!(
        line(Event::MemberSuspect { id: a() }),
        "member 10.0.0.13:7003 is suspect: not heard from lately"
    );
    assert_eq!(
        line(Event::MemberDown { id: a() }),
        "member 10.0.0.13:7003 is down: not heard from for too long; writes for it become hints"
    );
    assert_eq!(
        line(Event::MemberBack {
            id: a(),
            was: MemberState::Down
        }),
        "member 10.0.0.13:7003 is back (it was down)"
    );
    assert_eq!(
        line(Event::MemberBack {
            id: a(),
            was: MemberState::Suspect
        }),
        "member 10.0.0.13:7003 is back (it was suspect)"
    );
    assert_eq!(
        line(Event::StatusChanged {
            id: a(),
            status: Status::Leaving
        }),
        "10.0.0.13:7003 is now leaving"
    );
    assert_eq!(
        line(Event::Invited { by: id("a:1") }),
        "invited by a:1: joining its cluster"
    );
    assert_eq!(
        line(Event::InviteIgnored { by: id("a:1") }),
        "invitation from a:1 ignored: this node is already in a cluster"
    );
}

#[test]
fn rebalance_start_and_end_read_as_before() {
    assert_eq!(
        line(Event::RebalanceStarted {
            joining: ids(&["10.0.0.14:7004"]),
            leaving: vec![],
            receives: None,
        }),
        "rebalance started: joining [10.0.0.14:7004], leaving []; this node has no range to receive"
    );
    assert_eq!(
        line(Event::RebalanceStarted {
            joining: vec![],
            leaving: ids(&["b:1", "c:1"]),
            receives: Some(1),
        }),
        "rebalance started: joining [], leaving [b:1, c:1]; this node receives 1 range"
    );
    assert_eq!(
        line(Event::RebalanceStarted {
            joining: ids(&["d:1"]),
            leaving: vec![],
            receives: Some(0),
        }),
        "rebalance started: joining [d:1], leaving []; this node receives 0 ranges"
    );
    assert_eq!(
        line(Event::RebalanceDone {
            joined: ids(&["127.0.0.1:7004"]),
            left: vec![],
        }),
        "rebalance done: joined [127.0.0.1:7004], left []"
    );
    assert_eq!(
        line(Event::RebalanceOver {
            ring: ids(&["a:1", "b:1"]),
        }),
        "rebalance over: the ring is now [a:1, b:1]"
    );
}

/// Issue 13 follow-up: the rebalance line says "1 range", "1 node" in
/// the singular and the plural otherwise.
#[test]
fn the_receiving_line_counts_ranges_and_nodes_in_singular_and_plural() {
    for (ranges, nodes, want) in [
        (1, 1, "rebalance: receiving 1 range from 1 node"),
        (2, 1, "rebalance: receiving 2 ranges from 1 node"),
        (1, 3, "rebalance: receiving 1 range from 3 nodes"),
        (595, 3, "rebalance: receiving 595 ranges from 3 nodes"),
        (0, 0, "rebalance: receiving 0 ranges from 0 nodes"),
    ] {
        let e = Event::RebalanceReceiving {
            ranges,
            nodes,
            resumed: None,
        };
        assert_eq!(line(e), want);
    }
    assert_eq!(
        line(Event::RebalanceReceiving {
            ranges: 3,
            nodes: 2,
            resumed: Some((1, 2_340_000)),
        }),
        "rebalance: receiving 3 ranges from 2 nodes, resuming 1 of them where they stopped (2.3 MB received before)"
    );
}

#[test]
fn rebalance_progress_and_receipt_read_as_before() {
    let p = Progress {
        joining: ids(&["127.0.0.1:7004"]),
        leaving: vec![],
        ranges: (595, 0),
        bytes: 2_100_000,
        keys: 16257,
        rate: 15_500_000.0,
        fraction: 0.05,
        eta_secs: Some(3.0),
        waiting_for: Some("127.0.0.1:7004 to receive ranges".to_string()),
    };
    assert_eq!(
        line(Event::RebalanceProgress(p)),
        "rebalance: joining 127.0.0.1:7004; this node: 0/595 ranges, 2.1 MB, 16257 keys, 15.5 MB/s, 5%, 3 s left; waiting for 127.0.0.1:7004 to receive ranges"
    );
    assert_eq!(
        line(Event::RebalanceReceived {
            ranges: 595,
            keys: 378229,
            bytes: 48_790_000,
            elapsed_ms: 2_300,
        }),
        "rebalance: received all 595 ranges: 378229 keys, 48.79 MB in 2.3 s (21.2 MB/s)"
    );
    assert_eq!(
        line(Event::RebalanceReceived {
            ranges: 1,
            keys: 0,
            bytes: 0,
            elapsed_ms: 1,
        }),
        "rebalance: received all 1 range: 0 keys, 0.00 MB in 0.0 s (0.0 MB/s)"
    );
    assert_eq!(
        line(Event::StreamRefused {
            entries: 4,
            from: id("b:1"),
        }),
        "refused 4 streamed entries from b:1: timestamps beyond the maximum clock offset"
    );
}

#[test]
fn cleanup_events_read_as_before() {
    assert_eq!(
        line(Event::CleanupForgot { entries: 12 }),
        "cleanup: forgot 12 entries of ranges this node gave away or is receiving afresh"
    );
    assert_eq!(
        line(Event::CleanupFailed {
            error: "disk full".to_string()
        }),
        "cleanup failed, retried later: disk full"
    );
    assert_eq!(
        line(Event::CleanupSnapshotWritten),
        "cleanup: the snapshot that failed is written now"
    );
    assert_eq!(
        line(Event::CleanupSnapshotFailed {
            error: "disk full".to_string()
        }),
        "cleanup: snapshot failed again, retried later: disk full"
    );
}

#[test]
fn clock_events_read_as_before() {
    assert_eq!(
        line(Event::ClockAhead {
            max_offset_ms: 500,
            ahead_of: 2,
            peers: 3,
            from: id("b:1"),
            their_clock_ms: 1_000,
            our_clock_ms: 9_000,
        }),
        "this node's clock is more than the maximum clock offset (500 ms) ahead of 2 of 3 peers (b:1's reads 1000, ours 9000): it coordinates no operation until the clock is fixed"
    );
    assert_eq!(
        line(Event::ClockBack),
        "this node's clock is back within the maximum clock offset of its peers: coordinating again"
    );
    for (what, text) in [
        (Refused::Write, "a write"),
        (Refused::WriteAck, "a write ack"),
        (Refused::ReadReply, "a read reply"),
        (Refused::OwnWrite, "its own write"),
        (Refused::Timestamp, "a timestamp"),
    ] {
        assert_eq!(
            line(Event::RefusedFarAhead {
                what,
                from: id("b:1"),
                ts: 9_000_000,
                ahead_ms: 8_000,
                max_offset_ms: 500,
                refused: 3,
            }),
            format!("refused {text} from b:1: timestamp 9000000 is 8000 ms ahead of the cluster's time (maximum clock offset 500 ms); 3 refused so far")
        );
    }
    assert_eq!(
        line(Event::DuplicateNumber {
            from: id("b:1"),
            number: 7,
            holder: id("a:1"),
        }),
        "refused b:1: its version number 7 is already a:1's; node numbers (--node-id, or the hash of the address) must be unique in a cluster"
    );
    assert_eq!(
        line(Event::ClockExhausted {
            key: b"k1".to_vec(),
            last: u64::MAX,
        }),
        "write of k1 refused: the clock cannot go above 18446744073709551615"
    );
}

#[test]
fn other_events_read_as_before() {
    assert_eq!(
        line(Event::RejoiningFresh {
            why: "out of contact".to_string()
        }),
        "giving up this node's data and rejoining as a new generation: out of contact"
    );
    assert_eq!(
        line(Event::WriteGaveUp {
            key: b"k".to_vec(),
            newer: Ver { ts: 5, node: 2 },
            tries: 3,
        }),
        "write of k failed: replicas kept Ver { ts: 5, node: 2 }, newer, after 3 versions"
    );
    assert_eq!(
        line(Event::AePullRefused {
            keys: 5000,
            from: id("c:1"),
            max: 1024,
            refused: 4,
        }),
        "anti-entropy: refused a pull of 5000 keys from c:1 (at most 1024); 4 refused so far"
    );
}
