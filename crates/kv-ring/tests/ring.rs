//! Properties of the ring: determinism, preference lists, balance, and
//! minimal movement on joins and leaves.

use std::collections::BTreeSet;

use kv_ring::{key_position, Ring, DEFAULT_VNODES};
use proptest::prelude::*;

fn names(max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::btree_set("[a-z]{1,6}:[0-9]{2,4}", 1..max)
        .prop_map(|s| s.into_iter().collect())
}

fn sample_keys() -> Vec<Vec<u8>> {
    (0..2000u32)
        .map(|i| format!("key-{i}").into_bytes())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn same_ring_whatever_the_order(mut nodes in names(12), seed in any::<u64>()) {
        let a = Ring::with_nodes(32, &nodes);
        // A deterministic shuffle from the seed.
        let len = nodes.len();
        for i in (1..len).rev() {
            nodes.swap(i, (seed.rotate_left(i as u32) as usize) % (i + 1));
        }
        let b = Ring::with_nodes(32, &nodes);
        prop_assert_eq!(&a, &b);
        for k in sample_keys().iter().take(200) {
            prop_assert_eq!(a.preference_list(k, 3), b.preference_list(k, 3));
        }
    }

    #[test]
    fn preference_lists_hold_distinct_nodes(nodes in names(8), n in 1usize..6, key in proptest::collection::vec(any::<u8>(), 0..20)) {
        let ring = Ring::with_nodes(16, &nodes);
        let list = ring.preference_list(&key, n);
        prop_assert_eq!(list.len(), n.min(nodes.len()));
        let distinct: BTreeSet<_> = list.iter().collect();
        prop_assert_eq!(distinct.len(), list.len());
    }

    #[test]
    fn a_join_moves_keys_only_to_the_new_node(nodes in names(10), newcomer in "[A-Z]{3}:[0-9]{2}") {
        let before = Ring::with_nodes(64, &nodes);
        let mut after = before.clone();
        after.add(&newcomer);
        let keys = sample_keys();
        let mut moved = 0;
        for k in &keys {
            let (b, a) = (before.preference_list(k, 3), after.preference_list(k, 3));
            // New replicas are old ones plus, possibly, the newcomer.
            for node in &a {
                prop_assert!(b.contains(node) || *node == newcomer.as_str());
            }
            if b[0] != a[0] {
                prop_assert_eq!(a[0], newcomer.as_str());
                moved += 1;
            }
        }
        // About 1/(n+1) of the keys change primary; allow generous noise.
        let expect = keys.len() as f64 / (nodes.len() + 1) as f64;
        prop_assert!((moved as f64) < expect * 2.0 + 50.0, "moved {} expected about {}", moved, expect);
        // diff() names exactly the ranges that changed.
        let changes = before.diff(&after, 3);
        for k in &keys {
            let p = key_position(k);
            let changed = before.preference_list(k, 3) != after.preference_list(k, 3);
            let listed = changes.iter().any(|c| c.contains(p));
            prop_assert_eq!(changed, listed);
        }
    }

    #[test]
    fn a_leave_moves_only_the_leavers_keys(nodes in names(10), which in any::<proptest::sample::Index>()) {
        prop_assume!(nodes.len() >= 2);
        let before = Ring::with_nodes(64, &nodes);
        let leaver = nodes[which.index(nodes.len())].clone();
        let mut after = before.clone();
        after.remove(&leaver);
        prop_assert!(!after.contains(&leaver));
        prop_assert!(!after.nodes().contains(&leaver));
        prop_assert!(!after.shares(3).contains_key(&leaver));
        for k in &sample_keys() {
            let (b, a) = (before.preference_list(k, 3), after.preference_list(k, 3));
            // The leaver is gone: it owns nothing any more.
            prop_assert!(!a.contains(&leaver.as_str()), "{} still listed for {:?}", leaver, k);
            prop_assert_eq!(a.len(), b.len().min(nodes.len() - 1));
            if !b.contains(&leaver.as_str()) {
                prop_assert_eq!(&b, &a);
            } else {
                // The survivors keep their place; one node steps in.
                for node in b.iter().filter(|n| **n != leaver.as_str()) {
                    prop_assert!(a.contains(node));
                }
            }
        }
    }
}

fn max_over_mean(ring: &Ring, n: usize) -> f64 {
    let shares = ring.shares(n);
    let mean = shares.values().sum::<f64>() / shares.len() as f64;
    shares.values().cloned().fold(0.0, f64::max) / mean
}

#[test]
fn shares_sum_to_the_replica_count() {
    let ring = Ring::with_nodes(DEFAULT_VNODES, (0..5).map(|i| format!("n{i}")));
    for n in [1, 3, 5, 7] {
        let total: f64 = ring.shares(n).values().sum();
        assert!((total - n.min(5) as f64).abs() < 1e-9, "n={n}: {total}");
    }
}

/// The balance the docs quote, for the default token count and the node
/// names the balance example uses.
#[test]
fn default_vnodes_balance_ten_nodes_within_ten_percent() {
    let names: Vec<String> = (0..10).map(|i| format!("10.0.0.{}:8080", i + 1)).collect();
    let ring = Ring::with_nodes(DEFAULT_VNODES, &names);
    let r = max_over_mean(&ring, 1);
    assert!(r < 1.10, "max/mean {r}");
}

#[test]
fn single_node_and_empty_rings() {
    let empty = Ring::new(8);
    assert!(empty.preference_list(b"k", 3).is_empty());
    assert!(empty.diff(&empty, 3).is_empty());
    let one = Ring::with_nodes(8, ["only"]);
    assert_eq!(one.preference_list(b"k", 3), ["only"]);
    assert!((one.shares(1)["only"] - 1.0).abs() < 1e-9);
}
