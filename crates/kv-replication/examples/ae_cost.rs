//! Cost of anti-entropy when nothing differs. The store keeps a hash per
//! range of the ring up to date on every write, so a round only reads those
//! hashes (the peer compares them with its own the same way); the first
//! round after a ring change computes them with one pass over the data.
//!
//! `cargo run --release -p kv-replication --example ae_cost -- [KEYS]`

use std::time::Instant;

use kv_replication::{Config, Digest, Node, Persisted, Status};
use kv_storage::{Options, Store, Version};

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let store = Store::open(Options::in_memory()).expect("store");
    for i in 0..keys {
        let key = format!("key{i:013}");
        store
            .apply(key.as_bytes(), Some(&[b'v'; 100]), Version::new(i + 1, 1))
            .expect("apply");
    }
    let members = ["n0:1", "n1:1", "n2:1"]
        .iter()
        .map(|id| Digest::new(id, Status::Normal))
        .collect();
    let saved = Persisted {
        members,
        clock_floor: 0,
        stream: None,
    };
    let mut cfg = Config::new("n0:1");
    cfg.anti_entropy_interval = 1;
    cfg.gossip_interval = u64::MAX / 2;
    let mut node = Node::new(cfg, 1_000, Some(saved), &store, 7);
    while node.poll_output().is_some() {}
    let start = Instant::now();
    node.handle_tick(1_010, &store);
    let first = start.elapsed();
    while node.poll_output().is_some() {}
    let rounds = 100;
    let start = Instant::now();
    for r in 0..rounds {
        node.handle_tick(1_011 + r, &store);
    }
    let each = start.elapsed() / rounds as u32;
    let sent = std::iter::from_fn(|| node.poll_output()).count();
    println!(
        "{keys} keys: first round (hashes computed afresh) {:.3} s; later rounds {:.3} ms each ({sent} digests sent in {rounds} rounds)",
        first.as_secs_f64(),
        each.as_secs_f64() * 1e3,
    );
}
