//! The coordinator's write path under ring changes (review finding 6): a
//! write is sent to each replica once per ring epoch however many
//! replicas refuse it, and after a regroup only the answers of the new
//! groups' replicas decide it.

use super::failing_store::FailsAfterApplying;
use super::*;
use kv_storage::{Options, Store};

pub(super) const T0: u64 = 1_000_000;

pub(super) fn store() -> Store {
    Store::open(Options::in_memory()).expect("in-memory store")
}

fn digest(id: &str, status: Status) -> Digest {
    Digest::new(id, status)
}

/// Node `a:1` in a cluster of `a:1`, `b:1`, `c:1` (N = 3, W = 2) that has
/// heard from `b:1`, its outputs drained.
fn coordinator(s: &dyn ReplicaStore) -> Node {
    coordinator_among(s, &["a:1", "b:1", "c:1"])
}

/// Node `a:1` in a cluster of the normal members `ids` (N = 3, W = 2)
/// that has heard from `b:1`, its outputs drained.
fn coordinator_among(s: &dyn ReplicaStore, ids: &[&str]) -> Node {
    coordinator_with(s, ids, Config::new("a:1")).0
}

/// [`coordinator_among`] with configuration `cfg` (for `a:1`), and the
/// outputs drained.
pub(super) fn coordinator_with(
    s: &dyn ReplicaStore,
    ids: &[&str],
    cfg: Config,
) -> (Node, Vec<Output>) {
    let members = ids
        .iter()
        .map(|id| digest(id, Status::Normal))
        .collect::<Vec<_>>();
    let saved = Persisted {
        members: members.clone(),
        clock_floor: 0,
        stream: None,
    };
    let mut n = Node::new(cfg, T0, Some(saved), s, 1);
    let gossip = PeerMsg::Gossip {
        members,
        clock: T0,
        number: node_number("b:1"),
    };
    n.handle_message(T0, "b:1", gossip, s);
    let out = drain(&mut n, s);
    (n, out)
}

/// `n`'s outputs, its messages to itself ([`Output::Local`]) served from
/// `s` as a driver serves them (and what that outputs drained too).
pub(super) fn drain(n: &mut Node, s: &dyn ReplicaStore) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = n.poll_output() {
        match o {
            Output::Local(msg) => {
                let now = n.last_now;
                n.serve_own(now, msg, s);
            }
            o => out.push(o),
        }
    }
    out
}

/// The `Replicate` requests among `out`, by destination, with their op.
fn replicates(out: &[Output]) -> Vec<(NodeId, u64)> {
    versioned_replicates(out)
        .into_iter()
        .map(|(to, op, _)| (to, op))
        .collect()
}

/// [`replicates`] with the version each carries.
pub(super) fn versioned_replicates(out: &[Output]) -> Vec<(NodeId, u64, Ver)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, msg } => {
                let msg = match msg {
                    PeerMsg::OnRing { request, .. } => request.as_ref(),
                    other => other,
                };
                match msg {
                    PeerMsg::Replicate { op, version, .. } => Some((to.clone(), *op, *version)),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// The version pending write `op` of `n` is stamped with.
fn pending_version(n: &Node, op: u64) -> Ver {
    match n.pending.get(&op) {
        Some(Pending {
            work: Work::Write { version, .. },
            ..
        }) => *version,
        _ => panic!("write {op} is pending"),
    }
}

/// Each of `replicas` answers write `op` of `n` that it holds `newer`;
/// what `n` outputs then.
fn all_hold_newer(
    n: &mut Node,
    s: &dyn ReplicaStore,
    now: u64,
    op: u64,
    replicas: &[&str],
    newer: Ver,
) -> Vec<Output> {
    let mut out = Vec::new();
    for from in replicas {
        let lost = PeerMsg::ReplicateAck {
            op,
            existed: true,
            newer: Some(newer),
        };
        n.handle_message(now, from, lost, s);
        out.extend(drain(n, s));
    }
    out
}

const FIVE: [&str; 5] = ["a:1", "b:1", "c:1", "d:1", "e:1"];

/// The three owners of `key` among `ids` (N = 3), sorted.
pub(super) fn owners(ids: &[&str], key: &[u8]) -> Vec<String> {
    let ring = Ring::with_nodes(kv_ring::DEFAULT_VNODES, ids);
    let mut p: Vec<String> = ring
        .preference_list(key, 3)
        .into_iter()
        .map(String::from)
        .collect();
    p.sort();
    p
}

/// A key owned by `before` among `a:1`..`d:1`, and by `after` once
/// `e:1` is a member too.
fn key_moving(before: [&str; 3], after: [&str; 3]) -> Vec<u8> {
    (0..100_000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| owners(&FIVE[..4], k) == before && owners(&FIVE, k) == after)
        .expect("some key")
}

/// A key of `b:1`, `c:1` and `d:1` among `a:1`..`d:1`, not of `a:1`
/// (the coordinator).
fn foreign_key() -> Vec<u8> {
    (0..100_000)
        .map(|i| format!("key{i}").into_bytes())
        .find(|k| owners(&FIVE[..4], k) == ["b:1", "c:1", "d:1"])
        .expect("some key")
}

/// `n` hears, through `d:1`'s gossip, that `e:1` is a member.
fn e_joins(n: &mut Node, s: &dyn ReplicaStore, now: u64) {
    let members: Vec<Digest> = FIVE.iter().map(|id| digest(id, Status::Normal)).collect();
    let gossip = PeerMsg::Gossip {
        members,
        clock: now,
        number: node_number("d:1"),
    };
    n.handle_message(now, "d:1", gossip, s);
}

/// The client replies among `out`.
pub(super) fn replies(out: &[Output]) -> Vec<ClientReply> {
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
    let first = replicates(&drain(&mut a, &s));
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
        resent.extend(replicates(&drain(&mut a, &s)));
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
    let sent = replicates(&drain(&mut a, &s));
    let op = sent[0].1;
    let newer = Ver {
        ts: pending_version(&a, op).ts + 1_000,
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
    let out = drain(&mut a, &s);
    assert!(
        replicates(&out).contains(&("d:1".to_string(), op)),
        "{out:?}"
    );
    // c:1 holds the newer version too; d:1 has not answered yet.
    a.handle_message(T0 + 4, "c:1", lost(op), &s);
    let out = drain(&mut a, &s);
    assert_eq!(replies(&out), vec![], "decided before d:1 answered");
    // d:1 stores it: a:1 and d:1 are a write quorum of the new group.
    let ack = PeerMsg::ReplicateAck {
        op,
        existed: false,
        newer: None,
    };
    a.handle_message(T0 + 5, "d:1", ack, &s);
    let out = drain(&mut a, &s);
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
    let sent = replicates(&drain(&mut a, &s));
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
    let out = drain(&mut a, &s);
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
    drain(&mut b, &sb);
    assert_ne!(a.ring_id(), b.ring_id());

    a.handle_client(T0 + 1, 7, put(&key), &s);
    let out = drain(&mut a, &s);
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
    let refusal = drain(&mut b, &sb)
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
    let out = drain(&mut a, &s);
    assert_eq!(
        replies(&out),
        vec![ClientReply::Written {
            version: Ver::from(stored.version),
            existed: false
        }],
        "the ack carried in the refusal is b:1's answer"
    );
}

/// Simulator seed 5544 (main run), driven by hand. A coordinator sends a
/// write to the key's replicas; one of them stores it but its ack is lost
/// (a partition), so a read may return the write from there (and read
/// repair spread it). Newer writes then replace it everywhere. The ring
/// changes and the coordinator sends the write again, under the new ring,
/// to every replica that has not answered: each now holds the newer
/// version and says so. That answer says nothing of the first copy,
/// already replaced: the write must not be re-stamped above the newer
/// version (it would take effect a second time, after a write that
/// replaced it), and the client hears that it did not win.
#[test]
fn a_write_sent_again_after_a_regroup_is_not_re_stamped_on_answers_to_the_second_send() {
    let s = store();
    // A key of b:1, c:1, d:1 among four members, and of b:1, d:1, e:1
    // once e:1 is one: never of a:1, the coordinator.
    let four = ["a:1", "b:1", "c:1", "d:1"];
    let key = key_moving(["b:1", "c:1", "d:1"], ["b:1", "d:1", "e:1"]);
    let mut a = coordinator_among(&s, &four);
    a.handle_client(T0 + 1, 7, put(&key), &s);
    let mut first = replicates(&drain(&mut a, &s));
    first.sort();
    let to: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, ["b:1", "c:1", "d:1"], "{first:?}");
    let op = first[0].1;
    let version = pending_version(&a, op);
    // b:1 stored the write, but its ack never came; c:1 and d:1 never got
    // it. e:1 becomes a member: the key moves from c:1 to e:1.
    e_joins(&mut a, &s, T0 + 300);
    let mut again = replicates(&drain(&mut a, &s));
    again.sort();
    let to: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, ["b:1", "d:1", "e:1"], "sent again under the new ring");
    // Meanwhile newer writes replaced it on b:1 and reached d:1 and e:1:
    // every replica of the new group answers that it holds a newer one.
    let newer = Ver {
        ts: version.ts + 1_000,
        node: 1,
    };
    let out = all_hold_newer(&mut a, &s, T0 + 310, op, &["b:1", "d:1", "e:1"], newer);
    assert_eq!(
        replicates(&out),
        vec![],
        "re-stamped although b:1 may have stored (and a read returned) the first version"
    );
    assert_eq!(
        replies(&out),
        vec![ClientReply::Conflict { newer, tries: 1 }],
        "{out:?}"
    );
}

/// The same through hinted handoff: a write for a key whose replica
/// `d:1` is down leaves a hint for it; `d:1` comes back and the hint
/// delivers the write's version there (so a read may return it) before
/// the other replicas answer that they hold a newer one. The hint's
/// delivery is not an answer to the write: it must not be re-stamped.
#[test]
fn a_write_that_left_a_hint_is_not_re_stamped() {
    let s = store();
    let four = ["a:1", "b:1", "c:1", "d:1"];
    let key = foreign_key();
    let mut a = coordinator_among(&s, &four);
    // Long after the start, b:1 and c:1 are heard from, d:1 is not: down.
    let t1 = T0 + 10_000;
    let beat = |id: &str, now: u64| {
        let mut d = digest(id, Status::Normal);
        d.heartbeat = now;
        PeerMsg::Gossip {
            members: vec![d],
            clock: now,
            number: node_number(id),
        }
    };
    for id in ["b:1", "c:1"] {
        a.handle_message(t1, id, beat(id, t1), &s);
    }
    drain(&mut a, &s);
    assert_eq!(a.members.state("d:1", t1), Some(MemberState::Down));
    a.handle_client(t1, 7, put(&key), &s);
    let out = drain(&mut a, &s);
    let mut sent = replicates(&out);
    sent.sort();
    let to: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, ["b:1", "c:1"], "{out:?}");
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::StoreHint(h) if h.target == "d:1")),
        "{out:?}"
    );
    let op = sent[0].1;
    let version = pending_version(&a, op);
    // d:1 is back; the next gossip round delivers the hint, and d:1
    // stores it.
    let t2 = t1 + 10;
    a.handle_message(t2, "d:1", beat("d:1", t2), &s);
    drain(&mut a, &s);
    let t3 = t1 + 1_000;
    a.handle_tick(t3, &s);
    let out = drain(&mut a, &s);
    let hinted = versioned_replicates(&out)
        .into_iter()
        .find_map(|(to, op, v)| (to == "d:1" && v == version).then_some(op))
        .unwrap_or_else(|| panic!("the hint goes to d:1: {out:?}"));
    let stored = PeerMsg::ReplicateAck {
        op: hinted,
        existed: false,
        newer: None,
    };
    a.handle_message(t3 + 1, "d:1", stored, &s);
    drain(&mut a, &s);
    // b:1 and c:1 hold a newer version.
    let newer = Ver {
        ts: version.ts + 1_000,
        node: 1,
    };
    let out = all_hold_newer(&mut a, &s, t3 + 2, op, &["b:1", "c:1"], newer);
    assert_eq!(
        replicates(&out),
        vec![],
        "re-stamped although its hint put the first version on d:1"
    );
    assert_eq!(
        replies(&out),
        vec![ClientReply::Conflict { newer, tries: 1 }],
        "{out:?}"
    );
}

/// The coordinator's own copy: its store took the write but reported a
/// failure (the value is readable there all the same), so the write did
/// not count it. After a regroup the write is applied locally again, and
/// a newer version landed there meanwhile: the coordinator answers
/// itself "newer", as every other replica does. Its first copy may have
/// been read, so the write must not be re-stamped.
#[test]
fn a_write_whose_own_copy_failed_is_not_re_stamped() {
    let s = FailsAfterApplying::new(false);
    // A key of a:1, b:1, c:1 among four members, and of a:1, b:1, e:1
    // once e:1 is one.
    let four = ["a:1", "b:1", "c:1", "d:1"];
    let key = key_moving(["a:1", "b:1", "c:1"], ["a:1", "b:1", "e:1"]);
    let mut a = coordinator_among(&s, &four);
    s.fail_next.store(true, std::sync::atomic::Ordering::SeqCst);
    a.handle_client(T0 + 1, 7, put(&key), &s);
    let mut first = replicates(&drain(&mut a, &s));
    first.sort();
    let to: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, ["b:1", "c:1"], "{first:?}");
    let op = first[0].1;
    let version = pending_version(&a, op);
    assert!(
        s.inner.get_versioned(&key).is_some(),
        "the failed own copy is readable"
    );
    // b:1 and c:1 already hold a newer version, and it lands on a:1 too.
    let newer = Ver {
        ts: version.ts + 1_000,
        node: 1,
    };
    let out = all_hold_newer(&mut a, &s, T0 + 5, op, &["b:1", "c:1"], newer);
    assert_eq!(replies(&out), vec![], "waits for its own copy: {out:?}");
    ReplicaStore::apply_with_expiry(&s.inner, &key, Some(b"newer"), newer.into(), None)
        .expect("newer write");
    // e:1 becomes a member: the key moves from c:1 to e:1.
    e_joins(&mut a, &s, T0 + 300);
    let again = replicates(&drain(&mut a, &s));
    let to: Vec<&str> = again.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, ["e:1"], "sent to the new replica only");
    let out = all_hold_newer(&mut a, &s, T0 + 310, op, &["e:1"], newer);
    assert_eq!(
        replicates(&out),
        vec![],
        "re-stamped although the coordinator's own failed copy of the first version is readable"
    );
    assert_eq!(
        replies(&out),
        vec![ClientReply::Conflict { newer, tries: 1 }],
        "{out:?}"
    );
}

/// Guard for the rule above: a write whose coordinator's clock is behind,
/// with no regroup, no hint and no failure, is still re-stamped above
/// the newer version every replica holds.
#[test]
fn a_plain_write_behind_a_newer_version_is_still_re_stamped() {
    let s = store();
    let four = ["a:1", "b:1", "c:1", "d:1"];
    let key = foreign_key();
    let mut a = coordinator_among(&s, &four);
    a.handle_client(T0 + 1, 7, put(&key), &s);
    let mut sent = replicates(&drain(&mut a, &s));
    sent.sort();
    let to: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, ["b:1", "c:1", "d:1"], "{sent:?}");
    let op = sent[0].1;
    let version = pending_version(&a, op);
    let newer = Ver {
        ts: version.ts + 1_000,
        node: 1,
    };
    let out = all_hold_newer(&mut a, &s, T0 + 5, op, &to, newer);
    let again = versioned_replicates(&out);
    assert!(
        !again.is_empty() && again.iter().all(|(_, _, v)| *v > newer),
        "re-stamped above {newer:?}: {out:?}"
    );
}
