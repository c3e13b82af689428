//! The coordinator's write path under ring changes (review finding 6): a
//! write is sent to each replica once per ring epoch however many
//! replicas refuse it, and after a regroup only the answers of the new
//! groups' replicas decide it.

use super::*;
use kv_storage::{Options, Store};

const T0: u64 = 1_000_000;

fn store() -> Store {
    Store::open(Options::in_memory()).expect("in-memory store")
}

fn digest(id: &str, status: Status) -> Digest {
    Digest::new(id, status)
}

/// Node `a:1` in a cluster of `a:1`, `b:1`, `c:1` (N = 3, W = 2) that has
/// heard from `b:1`, its outputs drained.
fn coordinator(s: &Store) -> Node {
    let members = ["a:1", "b:1", "c:1"]
        .iter()
        .map(|id| digest(id, Status::Normal))
        .collect::<Vec<_>>();
    let saved = Persisted {
        members: members.clone(),
        clock_floor: 0,
        stream: None,
    };
    let mut n = Node::new(Config::new("a:1"), T0, Some(saved), s, 1);
    let gossip = PeerMsg::Gossip {
        members,
        clock: T0,
        number: node_number("b:1"),
    };
    n.handle_message(T0, "b:1", gossip, s);
    drain(&mut n);
    n
}

fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

/// The `Replicate` requests among `out`, by destination, with their op.
fn replicates(out: &[Output]) -> Vec<(NodeId, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => {
                let msg = match msg {
                    PeerMsg::OnRing { request, .. } => request.as_ref(),
                    other => other,
                };
                match msg {
                    PeerMsg::Replicate { op, .. } => Some((to.clone(), *op)),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

fn replies(out: &[Output]) -> Vec<ClientReply> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reply { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

fn put(key: &[u8]) -> ClientOp {
    ClientOp::Put {
        key: key.to_vec(),
        value: b"v".to_vec(),
        expires_at: None,
    }
}

/// Every replica refuses a write for a newer ring (a member this
/// coordinator had not heard of yet): the write goes again to each
/// replica once under the newer ring, not once per refusal (N - 1
/// refusals each resending to the N - 1 others before the fix).
#[test]
fn refusals_for_a_newer_ring_resend_once_per_replica() {
    let s = store();
    let mut a = coordinator(&s);
    a.handle_client(T0 + 1, 7, put(b"k"), &s);
    let first = replicates(&drain(&mut a));
    assert_eq!(first.len(), 2, "{first:?}");
    let op = first[0].1;
    // The replicas know of a fourth member, waiting to join: a newer
    // epoch, the same replica groups.
    let newer: Vec<Digest> = ["a:1", "b:1", "c:1"]
        .iter()
        .map(|id| digest(id, Status::Normal))
        .chain([digest("d:1", Status::Waiting)])
        .collect();
    let mut resent = Vec::new();
    for from in ["b:1", "c:1"] {
        let msg = PeerMsg::RingDiffers {
            op,
            members: newer.clone(),
            ack: None,
        };
        a.handle_message(T0 + 2, from, msg, &s);
        resent.extend(replicates(&drain(&mut a)));
    }
    resent.sort();
    assert_eq!(
        resent,
        vec![("b:1".to_string(), op), ("c:1".to_string(), op)],
        "each replica gets the write once under the newer ring"
    );
}

/// After a regroup, a write decided by "every replica answered" counts
/// only the replicas of its new groups: the answers of a replica that
/// left them must not make it fail as a conflict before a new replica,
/// which stores it, has answered.
#[test]
fn answers_from_the_old_group_do_not_decide_a_regrouped_write() {
    let s = store();
    // A key whose replicas, once d:1 is a member, leave b:1 out and keep
    // a:1 (the coordinator) and c:1.
    let four = Ring::with_nodes(kv_ring::DEFAULT_VNODES, ["a:1", "b:1", "c:1", "d:1"]);
    let key = (0..10_000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| {
            let p = four.preference_list(k, 3);
            p.contains(&"a:1") && p.contains(&"c:1") && p.contains(&"d:1")
        })
        .expect("some key");
    let mut a = coordinator(&s);
    a.handle_client(T0 + 1, 7, put(&key), &s);
    let sent = replicates(&drain(&mut a));
    let op = sent[0].1;
    let Some(Pending {
        work: Work::Write { version, .. },
        ..
    }) = a.pending.get(&op)
    else {
        panic!("the write is pending");
    };
    let newer = Ver {
        ts: version.ts + 1_000,
        node: 1,
    };
    let lost = |op| PeerMsg::ReplicateAck {
        op,
        existed: true,
        newer: Some(newer),
    };
    // b:1 holds a newer version: the write lost there.
    a.handle_message(T0 + 2, "b:1", lost(op), &s);
    // d:1 becomes a member: the key's replicas are now a:1, c:1, d:1.
    let four_members: Vec<Digest> = ["a:1", "b:1", "c:1", "d:1"]
        .iter()
        .map(|id| digest(id, Status::Normal))
        .collect();
    let gossip = PeerMsg::Gossip {
        members: four_members,
        clock: T0 + 3,
        number: node_number("c:1"),
    };
    a.handle_message(T0 + 3, "c:1", gossip, &s);
    let out = drain(&mut a);
    assert!(
        replicates(&out).contains(&("d:1".to_string(), op)),
        "{out:?}"
    );
    // c:1 holds the newer version too; d:1 has not answered yet.
    a.handle_message(T0 + 4, "c:1", lost(op), &s);
    let out = drain(&mut a);
    assert_eq!(replies(&out), vec![], "decided before d:1 answered");
    // d:1 stores it: a:1 and d:1 are a write quorum of the new group.
    let ack = PeerMsg::ReplicateAck {
        op,
        existed: false,
        newer: None,
    };
    a.handle_message(T0 + 5, "d:1", ack, &s);
    let out = drain(&mut a);
    assert!(
        matches!(replies(&out).as_slice(), [ClientReply::Written { .. }]),
        "{out:?}"
    );
}

/// Review finding 1: a replica on a newer ring stores a write it owns and
/// carries its ack in `RingDiffers`. The merge may move the key away from
/// the coordinator: the carried ack must count against the key's groups
/// under the merged ring, not the ones the write was first sent to, or
/// the coordinator's own copy (soon forgotten as given away) plus that
/// one ack would complete the write on a single new owner.
#[test]
fn an_ack_carried_in_a_refusal_counts_against_the_current_groups() {
    let s = store();
    // A key that, once d:1 and e:1 are members, belongs to b:1 and two
    // newcomers, no longer to a:1 (the coordinator) nor c:1.
    let five = Ring::with_nodes(kv_ring::DEFAULT_VNODES, ["a:1", "b:1", "c:1", "d:1", "e:1"]);
    let key = (0..100_000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| {
            let p = five.preference_list(k, 3);
            p.contains(&"b:1") && !p.contains(&"a:1") && !p.contains(&"c:1")
        })
        .expect("some key");
    let mut a = coordinator(&s);
    a.handle_client(T0 + 1, 7, put(&key), &s);
    let sent = replicates(&drain(&mut a));
    let op = sent[0].1;
    // b:1 is on the five-member ring, owns the key there, stores the
    // write and refuses with its ack.
    let five_members: Vec<Digest> = ["a:1", "b:1", "c:1", "d:1", "e:1"]
        .iter()
        .map(|id| digest(id, Status::Normal))
        .collect();
    let ack = PeerMsg::ReplicateAck {
        op,
        existed: false,
        newer: None,
    };
    let refusal = PeerMsg::RingDiffers {
        op,
        members: five_members,
        ack: Some(Box::new(ack)),
    };
    a.handle_message(T0 + 2, "b:1", refusal, &s);
    let out = drain(&mut a);
    assert_eq!(
        replies(&out),
        vec![],
        "answered with b:1's ack and a copy a:1 no longer owns"
    );
    // The write went on to the key's new owners.
    let to: Vec<String> = replicates(&out).into_iter().map(|(n, _)| n).collect();
    assert!(
        to.contains(&"d:1".to_string()) || to.contains(&"e:1".to_string()),
        "{out:?}"
    );
}

/// The path of simulator seed 281 (join/leave run), driven by hand: a
/// replica on a newer ring refuses a write from a coordinator on an older
/// one, but owns the key under its ring, so it stores the write and
/// carries its ack in the refusal. The coordinator counts that ack as the
/// replica's answer: with its own copy, a write quorum holds the version
/// and the client hears OK at once. Ignored, the ack would leave the
/// write waiting (and, with every other replica holding a newer version,
/// re-stamped as if no replica held it, although a read may have
/// returned the copy stored here).
#[test]
fn a_refusing_replica_that_owns_the_key_stores_the_write_and_its_ack_counts() {
    let s = store();
    let mut a = coordinator(&s);
    // b:1 knows of a fourth member joining (a newer ring id), and the key
    // stays with a:1 and b:1 under both rings.
    let newer: Vec<Digest> = ["a:1", "b:1", "c:1"]
        .iter()
        .map(|id| digest(id, Status::Normal))
        .chain([digest("d:1", Status::Joining)])
        .collect();
    let four = Ring::with_nodes(kv_ring::DEFAULT_VNODES, ["a:1", "b:1", "c:1", "d:1"]);
    let key = (0..10_000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| {
            let p = four.preference_list(k, 3);
            p.contains(&"a:1") && p.contains(&"b:1")
        })
        .expect("some key");
    let sb = store();
    let saved = Persisted {
        members: newer,
        clock_floor: 0,
        stream: None,
    };
    let mut b = Node::new(Config::new("b:1"), T0, Some(saved), &sb, 2);
    drain(&mut b);
    assert_ne!(a.ring_id(), b.ring_id());

    a.handle_client(T0 + 1, 7, put(&key), &s);
    let out = drain(&mut a);
    let to_b = out
        .into_iter()
        .find_map(|o| match o {
            Output::Send { to, msg } if to == "b:1" => Some(msg),
            _ => None,
        })
        .expect("the write goes to b:1");
    assert!(matches!(to_b, PeerMsg::OnRing { .. }), "{to_b:?}");
    b.handle_message(T0 + 2, "a:1", to_b, &sb);

    // b:1 stored the write although it refused it, and says so.
    let stored = sb
        .get_versioned(&key)
        .expect("b:1 stores the write it owns");
    let refusal = drain(&mut b)
        .into_iter()
        .find_map(|o| match o {
            Output::Send {
                to,
                msg: msg @ PeerMsg::RingDiffers { .. },
            } if to == "a:1" => Some(msg),
            _ => None,
        })
        .expect("b:1 refuses the write");
    let PeerMsg::RingDiffers { ack: Some(ack), .. } = &refusal else {
        panic!("the refusal carries b:1's ack: {refusal:?}");
    };
    assert!(
        matches!(**ack, PeerMsg::ReplicateAck { newer: None, .. }),
        "{ack:?}"
    );

    // a:1's copy and b:1's carried ack are a write quorum: OK at once,
    // with the version b:1 stored, before b:1 is asked again.
    a.handle_message(T0 + 3, "b:1", refusal, &s);
    let out = drain(&mut a);
    assert_eq!(
        replies(&out),
        vec![ClientReply::Written {
            version: Ver::from(stored.version),
            existed: false
        }],
        "the ack carried in the refusal is b:1's answer"
    );
}
