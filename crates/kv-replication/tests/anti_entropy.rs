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
