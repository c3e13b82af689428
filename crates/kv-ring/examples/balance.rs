//! Load balance of the ring: for 3, 10 and 100 nodes and several token
//! counts, the busiest node's share of the ring over the mean share.
//!
//! `cargo run --release -p kv-ring --example balance`

use kv_ring::Ring;

fn main() {
    println!("nodes  vnodes  max/mean (primary)  max/mean (3 replicas)");
    for nodes in [3usize, 10, 100] {
        for vnodes in [16u32, 64, 128, 256, 512] {
            let names: Vec<String> = (0..nodes)
                .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
                .collect();
            let ring = Ring::with_nodes(vnodes, &names);
            let ratio = |n: usize| {
                let shares = ring.shares(n);
                let mean = shares.values().sum::<f64>() / shares.len() as f64;
                shares.values().cloned().fold(0.0, f64::max) / mean
            };
            println!(
                "{nodes:>5}  {vnodes:>6}  {:>18.3}  {:>21.3}",
                ratio(1),
                ratio(3)
            );
        }
    }
}
