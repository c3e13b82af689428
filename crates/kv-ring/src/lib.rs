//! `kv-ring`: consistent hashing with virtual nodes.
//!
//! Every node owns `vnodes` tokens, points on a 64-bit circle placed by
//! xxh3 of the node's name (one seed per token). A key hashes (xxh3) to a
//! point; its replicas are the first `n` distinct nodes met walking the
//! circle clockwise from there: its *preference list*. Every node that
//! knows the same members computes the same ring, whatever order it learnt
//! them in.
//!
//! ```
//! use kv_ring::Ring;
//!
//! let mut ring = Ring::new(kv_ring::DEFAULT_VNODES);
//! for node in ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"] {
//!     ring.add(node);
//! }
//! let replicas = ring.preference_list(b"user:42", 2);
//! assert_eq!(replicas.len(), 2);
//! assert_ne!(replicas[0], replicas[1]);
//!
//! // What moves when a fourth node joins: only ranges it takes over.
//! let mut bigger = ring.clone();
//! bigger.add("10.0.0.4:8080");
//! for change in ring.diff(&bigger, 2) {
//!     assert!(change.after.iter().any(|n| n == "10.0.0.4:8080"));
//! }
//! ```

#![deny(missing_docs)]

use std::collections::BTreeMap;

/// Tokens per node unless configured otherwise. Chosen by measurement
/// (`cargo run --release -p kv-ring --example balance`): at 256 tokens the
/// busiest of 10 nodes owns 1.07× the mean share; see
/// `docs/performance.md`.
pub const DEFAULT_VNODES: u32 = 256;

/// The hash of a key: its position on the ring.
pub fn key_position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The position of a node's `i`-th token.
fn token(node: &str, i: u32) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(node.as_bytes(), u64::from(i))
}

/// A consistent-hash ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    vnodes: u32,
    /// Sorted node names.
    nodes: Vec<String>,
    /// (position, index into `nodes`), sorted by position then node name.
    tokens: Vec<(u64, usize)>,
}

/// A range of positions whose replicas differ between two rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeChange {
    /// Start of the range, exclusive.
    pub start: u64,
    /// End of the range, inclusive. A range with `start >= end` wraps
    /// around zero.
    pub end: u64,
    /// Replicas before the change, in preference order.
    pub before: Vec<String>,
    /// Replicas after the change, in preference order.
    pub after: Vec<String>,
}

impl RangeChange {
    /// Whether position `p` lies in this range.
    pub fn contains(&self, p: u64) -> bool {
        if self.start < self.end {
            p > self.start && p <= self.end
        } else {
            p > self.start || p <= self.end
        }
    }
}

impl Ring {
    /// An empty ring whose nodes get `vnodes` tokens each (at least 1).
    pub fn new(vnodes: u32) -> Ring {
        Ring {
            vnodes: vnodes.max(1),
            nodes: Vec::new(),
            tokens: Vec::new(),
        }
    }

    /// A ring of the given nodes.
    pub fn with_nodes<S: AsRef<str>>(vnodes: u32, nodes: impl IntoIterator<Item = S>) -> Ring {
        let mut r = Ring::new(vnodes);
        for n in nodes {
            r.add(n.as_ref());
        }
        r
    }

    /// Tokens per node.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The members, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Every token's position, sorted, without repeats: the upper bounds of
    /// the ring's ranges (range `i` is `(p[i-1], p[i]]`, range 0 wraps).
    pub fn token_positions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.tokens.iter().map(|&(t, _)| t).collect();
        v.dedup();
        v
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &str) -> bool {
        self.nodes
            .binary_search_by(|n| n.as_str().cmp(node))
            .is_ok()
    }

    /// Adds a node; false if it was already there.
    pub fn add(&mut self, node: &str) -> bool {
        match self.nodes.binary_search_by(|n| n.as_str().cmp(node)) {
            Ok(_) => false,
            Err(at) => {
                self.nodes.insert(at, node.to_string());
                self.rebuild();
                true
            }
        }
    }

    /// Removes a node; false if it was not there.
    pub fn remove(&mut self, node: &str) -> bool {
        match self.nodes.binary_search_by(|n| n.as_str().cmp(node)) {
            Ok(at) => {
                self.nodes.remove(at);
                self.rebuild();
                true
            }
            Err(_) => false,
        }
    }

    fn rebuild(&mut self) {
        self.tokens = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| (0..self.vnodes).map(move |v| (token(n, v), i)))
            .collect();
        // Ties (vanishingly rare) break by node name: still deterministic.
        self.tokens.sort_unstable();
    }

    /// The first `n` distinct nodes clockwise from position `p` (fewer if
    /// the ring has fewer nodes).
    pub fn preference_list_at(&self, p: u64, n: usize) -> Vec<&str> {
        let want = n.min(self.nodes.len());
        let mut out: Vec<&str> = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let start = self.tokens.partition_point(|&(t, _)| t < p);
        for k in 0..self.tokens.len() {
            let (_, i) = self.tokens[(start + k) % self.tokens.len()];
            let node = self.nodes[i].as_str();
            if !out.contains(&node) {
                out.push(node);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// The preference list of a key: its `n` replicas, in order.
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<&str> {
        self.preference_list_at(key_position(key), n)
    }

    /// The share of the ring for which each node is among the `n`
    /// replicas (for `n` = 1, the share it is primary for). Shares sum to
    /// `min(n, nodes)`.
    pub fn shares(&self, n: usize) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = self.nodes.iter().map(|n| (n.clone(), 0.0)).collect();
        for (k, &(t, _)) in self.tokens.iter().enumerate() {
            let prev = if k == 0 {
                self.tokens[self.tokens.len() - 1].0
            } else {
                self.tokens[k - 1].0
            };
            let width = t.wrapping_sub(prev) as f64 / 2f64.powi(64);
            let width = if self.tokens.len() == 1 { 1.0 } else { width };
            for node in self.preference_list_at(t, n) {
                if let Some(s) = out.get_mut(node) {
                    *s += width;
                }
            }
        }
        out
    }

    /// The ranges whose replicas (the first `n` nodes) differ between
    /// `self` and `other`, adjacent equal changes merged.
    pub fn diff(&self, other: &Ring, n: usize) -> Vec<RangeChange> {
        self.diff_sized(other, n, n)
    }

    /// Like [`Ring::diff`], with `n` replicas per key in `self` and
    /// `n_other` in `other` (the replication factor is capped by a ring's
    /// size, so it can change when a cluster grows from one or two nodes).
    pub fn diff_sized(&self, other: &Ring, n: usize, n_other: usize) -> Vec<RangeChange> {
        let mut bounds: Vec<u64> = self
            .tokens
            .iter()
            .chain(other.tokens.iter())
            .map(|&(t, _)| t)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut out: Vec<RangeChange> = Vec::new();
        for (k, &end) in bounds.iter().enumerate() {
            let start = if k == 0 {
                bounds[bounds.len() - 1]
            } else {
                bounds[k - 1]
            };
            let before = owned(self.preference_list_at(end, n));
            let after = owned(other.preference_list_at(end, n_other));
            if before == after {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == start && last.before == before && last.after == after => {
                    last.end = end;
                }
                _ => out.push(RangeChange {
                    start,
                    end,
                    before,
                    after,
                }),
            }
        }
        out
    }
}

fn owned(v: Vec<&str>) -> Vec<String> {
    v.into_iter().map(str::to_string).collect()
}
