//! Anti-entropy between two real `Node`s on in-memory stores, messages
//! delivered at once: it repairs a differing range by reading only that
//! range, and it never brings back a tombstone a replica has purged.

use kv_replication::{Config, Node, Output, Status};
use kv_storage::{Options, Store, Version};

const A: &str = "127.0.0.1:7001";
const B: &str = "127.0.0.1:7002";
/// A wall clock in ms, far enough from 0 for a grace period to lie behind.
const T0: u64 = 1_800_000_000_000;
const HOUR_MS: u64 = 3600 * 1000;

struct Pair {
    now: u64,
    nodes: [Node; 2],
    stores: [Store; 2],
}

fn config(id: &str, number: u32) -> Config {
    let mut c = Config::new(id);
    c.replicas = 2;
    c.number = Some(number);
    c.anti_entropy_interval = 1000;
    c
}

impl Pair {
    /// Two nodes in one cluster, settled.
    fn new() -> Pair {
        let stores = [
            Store::open(Options::in_memory()).expect("in-memory store"),
            Store::open(Options::in_memory()).expect("in-memory store"),
        ];
        let a = Node::new(config(A, 1), T0, None, &stores[0], 1);
        let mut b = Node::new(config(B, 2), T0, None, &stores[1], 2);
        b.join(T0, A);
        let mut p = Pair {
            now: T0,
            nodes: [a, b],
            stores,
        };
        let settled = |p: &Pair| {
            p.nodes.iter().all(|n| {
                n.status() == Status::Normal && !n.rebalancing() && n.view(p.now).len() == 2
            })
        };
        for _ in 0..3000 {
            if settled(&p) {
                break;
            }
            p.step(10);
        }
        assert!(settled(&p), "the two nodes never formed a cluster");
        p
    }

    fn index(id: &str) -> usize {
        usize::from(id == B)
    }

    /// Moves time forward by `ms`, ticking both nodes, and delivers every
    /// message until none is left.
    fn step(&mut self, ms: u64) {
        self.now += ms;
        for i in 0..2 {
            self.nodes[i].handle_tick(self.now, &self.stores[i]);
        }
        let mut rounds = 0;
        loop {
            let mut sent = Vec::new();
            for i in 0..2 {
                let from = if i == 0 { A } else { B };
                while let Some(out) = self.nodes[i].poll_output() {
                    if let Output::Send { to, msg } = out {
                        sent.push((from, to, msg));
                    }
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, msg) in sent {
                let j = Pair::index(&to);
                self.nodes[j].handle_message(self.now, from, msg, &self.stores[j]);
            }
            rounds += 1;
            assert!(rounds < 100_000, "anti-entropy never went quiet");
        }
    }

    /// Both stores get `key` at `version` (a tombstone if `value` is None).
    fn both(&self, key: &[u8], value: Option<&[u8]>, version: Version) {
        for s in &self.stores {
            s.apply(key, value, version).expect("apply");
        }
    }
}

/// Anti-entropy rounds for `ms` of simulated time.
fn run_for(p: &mut Pair, ms: u64) {
    for _ in 0..ms / 100 {
        p.step(100);
    }
}

#[test]
fn one_differing_range_is_the_only_one_read() {
    let mut p = Pair::new();
    let ts = (T0 - HOUR_MS) * 1000;
    for i in 0..20_000u32 {
        let key = format!("key-{i}");
        p.both(key.as_bytes(), Some(b"value"), Version::new(ts, 1));
    }
    // One newer write that only A holds, as if B had missed it.
    p.stores[0]
        .apply(b"key-7", Some(b"new"), Version::new(ts + 1, 1))
        .expect("apply");
    // Let anti-entropy track the ring's ranges, then count reads from here.
    let read_before = [p.stores[0].range_keys_read(), p.stores[1].range_keys_read()];
    run_for(&mut p, 5000);
    assert_eq!(p.stores[1].get(b"key-7").as_deref(), Some(&b"new"[..]));
    assert_eq!(p.stores[0].range_hashes(), p.stores[1].range_hashes());
    // The range holding key-7: how many keys it has.
    let bounds = kv_ring::Ring::with_nodes(kv_ring::DEFAULT_VNODES, [A, B]).token_positions();
    let range = Store::range_of_key(&bounds, b"key-7");
    let in_range = (0..20_000u32)
        .filter(|i| Store::range_of_key(&bounds, format!("key-{i}").as_bytes()) == range)
        .count() as u64;
    for (i, s) in p.stores.iter().enumerate() {
        let read = s.range_keys_read() - read_before[i];
        assert!(
            read >= in_range && read <= 2 * in_range + 2,
            "node {i} read {read} keys for a range of {in_range} (the store holds 20000)"
        );
    }
}

#[test]
fn a_purged_tombstone_is_not_pulled_back() {
    let mut p = Pair::new();
    // Deleted five hours ago: past the default four-hour grace.
    let old = (p.now - 5 * HOUR_MS) * 1000;
    p.both(b"gone", Some(b"v"), Version::new(old - 1, 1));
    p.both(b"gone", None, Version::new(old, 1));
    p.both(b"kept", Some(b"v"), Version::new(old, 1));
    // A purges it (as its snapshot does past the grace); B not yet.
    assert_eq!(p.stores[0].purge_tombstones(old + 1), 1);
    run_for(&mut p, 5000);
    assert_eq!(
        p.stores[0].get_versioned(b"gone"),
        None,
        "anti-entropy brought back a tombstone this node had purged"
    );
    // A recent tombstone still travels: it may delete a live value.
    let recent = (p.now - 1000) * 1000;
    p.stores[1]
        .apply(b"kept", None, Version::new(recent, 1))
        .expect("apply");
    run_for(&mut p, 5000);
    assert_eq!(p.stores[0].get(b"kept"), None);
    assert!(p.stores[0].get_versioned(b"kept").is_some());
}

// What one anti-entropy task may cost the node that runs it, whatever a
// peer (a buggy one, or one with a stolen secret) asks.

use std::sync::Arc;

use kv_replication::anti_entropy::{AeView, AeWork, PAGE_KEYS, VALUES_BYTES};
use kv_replication::{AeOutcome, AeTask, AntiEntropy, PeerMsg};

const C: &str = "127.0.0.1:7003";

/// A task for node `me` of `ring` (N=2) answering `msg` from `from`.
fn task(ring: &kv_ring::Ring, me: &str, from: &str, msg: PeerMsg) -> AeTask {
    AeTask {
        view: Arc::new(AeView::new(ring, 2, me)),
        epoch: 0,
        old_before: 0,
        max_ts: u64::MAX,
        work: AeWork::Message(from.to_string(), msg),
    }
}

/// The keys of every `AeValues` in `out`, with the bytes of each message.
fn values_sent(out: &AeOutcome) -> Vec<(Vec<Vec<u8>>, usize)> {
    out.sends
        .iter()
        .filter_map(|(_, m)| match m {
            PeerMsg::AeValues { entries } => Some((
                entries.iter().map(|e| e.key.clone()).collect(),
                entries
                    .iter()
                    .map(|e| e.key.len() + e.value.as_ref().map_or(0, Vec::len))
                    .sum(),
            )),
            _ => None,
        })
        .collect()
}

fn store_with(keys: impl IntoIterator<Item = Vec<u8>>, value: &[u8]) -> Store {
    let store = Store::open(Options::in_memory()).expect("in-memory store");
    for k in keys {
        store
            .apply(&k, Some(value), Version::new(T0 * 1000, 1))
            .expect("apply");
    }
    store
}

/// Runs `task` and every continuation it leaves, as a driver does:
/// returns each outcome in turn.
fn run_all(ae: &mut AntiEntropy, first: AeTask, store: &Store) -> Vec<AeOutcome> {
    let mut outs = vec![ae.run(first, store)];
    while let Some(next) = outs.last_mut().and_then(|o| o.next.take()) {
        outs.push(ae.run(next, store));
        assert!(outs.len() < 10_000, "the continuations never end");
    }
    outs
}

/// No honest node pulls more keys than one page holds (it pulls what one
/// page of the other's showed newer): a pull of more is refused whole, so
/// that one message cannot make the node read and send its whole store.
#[test]
fn a_pull_of_more_keys_than_a_page_is_refused() {
    let ring = kv_ring::Ring::with_nodes(kv_ring::DEFAULT_VNODES, [A, B]);
    let keys: Vec<Vec<u8>> = (0..3 * PAGE_KEYS)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    let store = store_with(keys.clone(), b"value");
    let mut ae = AntiEntropy::default();
    let pull = PeerMsg::AePull { keys };
    let outs = run_all(&mut ae, task(&ring, A, B, pull), &store);
    let sent: usize = outs
        .iter()
        .flat_map(values_sent)
        .map(|(k, _)| k.len())
        .sum();
    assert!(
        sent <= PAGE_KEYS,
        "a pull of {} keys was served: {sent} values sent",
        3 * PAGE_KEYS
    );
}

/// A peer may pull only keys of ranges both it and this node replicate:
/// with three nodes and N=2, B pulls every key A holds, and gets only
/// those of the ranges A and B share.
#[test]
fn a_pull_is_served_only_for_ranges_both_replicate() {
    let ring = kv_ring::Ring::with_nodes(kv_ring::DEFAULT_VNODES, [A, B, C]);
    let keys: Vec<Vec<u8>> = (0..PAGE_KEYS)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    let store = store_with(keys.clone(), b"value");
    let mut ae = AntiEntropy::default();
    let outs = run_all(&mut ae, task(&ring, A, B, PeerMsg::AePull { keys }), &store);
    let sent: Vec<Vec<u8>> = outs
        .iter()
        .flat_map(values_sent)
        .flat_map(|(k, _)| k)
        .collect();
    assert!(!sent.is_empty(), "nothing served at all");
    let foreign: Vec<String> = sent
        .iter()
        .filter(|k| {
            let owners = ring.preference_list(k, 2);
            !(owners.contains(&A) && owners.contains(&B))
        })
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        foreign.is_empty(),
        "{} of {} values sent to B are of ranges B does not replicate with A, e.g. {:?}",
        foreign.len(),
        sent.len(),
        &foreign[..foreign.len().min(3)]
    );
}

/// The values of a pull go out one message at a time: a task builds one
/// message of at most [`VALUES_BYTES`] (or one value), and leaves the rest
/// to a continuation the driver runs once that message is sent. Before,
/// one pull of 40 values of 256 KiB built all 10 MiB of messages at once.
#[test]
fn values_go_out_one_message_at_a_time() {
    let ring = kv_ring::Ring::with_nodes(kv_ring::DEFAULT_VNODES, [A, B]);
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("big{i}").into_bytes()).collect();
    let store = store_with(keys.clone(), &vec![b'x'; 256 << 10]);
    let mut ae = AntiEntropy::default();
    let outs = run_all(&mut ae, task(&ring, A, B, PeerMsg::AePull { keys }), &store);
    let mut total = 0;
    for (i, out) in outs.iter().enumerate() {
        let msgs = values_sent(out);
        assert!(
            msgs.len() <= 1,
            "step {i} built {} messages of values at once ({} bytes)",
            msgs.len(),
            msgs.iter().map(|(_, b)| b).sum::<usize>()
        );
        for (k, bytes) in msgs {
            assert!(bytes <= VALUES_BYTES, "{bytes} bytes in one message");
            total += k.len();
        }
    }
    assert_eq!(total, 40, "every value pulled is sent in the end");
}
